package ctl

import (
	"context"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
)

func (e *env) creds(ctx context.Context, args []string) int {
	if len(args) == 0 {
		return e.fail(usageErr(credsUsage))
	}
	op := args[0]
	fs := sub("creds "+op, e)
	kind := fs.String("kind", "", "client-secret, password, certificate, ca-certificate or tls-certificate")
	from := fs.String("from", "-", "read the secret from this file (- for stdin); never a flag value")
	certF := fs.String("cert", "", "certificate PEM file (for ca-certificate: the CA certificates)")
	keyF := fs.String("key", "", "private key PEM file")
	pfxF := fs.String("pfx", "", "PFX (PKCS #12) file")
	pfxPw := fs.String("pfx-password-from", "", "read the PFX password from this file (- for stdin)")
	expires := fs.String("expires", "", "put: when the client secret or password expires (YYYY-MM-DD), for the expiry warnings")
	days := fs.Int("days", 0, "new-certificate: days the certificate is valid (default 365)")
	subject := fs.String("subject", "", "new-certificate: the certificate's subject, e.g. CN=siterelay-plant7")
	outF := fs.String("out", "", "new-certificate: also write the certificate (PEM, public) to this file")
	force := fs.Bool("force", false, "delete: even a credential the configuration uses (its upstreams then hold their mail until it is put again)")
	pos, err := parse(fs, args[1:])
	if err != nil {
		return e.fail(err)
	}
	switch {
	case op == "list" && len(pos) == 0:
		return e.call(ctx, func(ctx context.Context, c *api.Client) error {
			l, err := c.Credentials(ctx)
			if err != nil {
				return err
			}
			return e.out(l, func(t *tabwriter.Writer) {
				fmt.Fprintln(t, "NAME\tKIND\tORIGIN\tFINGERPRINT\tUPDATED\tEXPIRES\tLAST USED")
				for _, cr := range l {
					row(t, "%s\t%s\t%s\t%.23s\t%s\t%s\t%s\n", cr.Name, cr.Kind, origin(cr.Origin), cr.Fingerprint, day(cr.Updated), day(cr.NotAfter), day(cr.LastUsed))
				}
			})
		})
	case op == "delete" && len(pos) == 1:
		return e.change(ctx, func(ctx context.Context, c *api.Client) error {
			del := c.DeleteCredential
			if *force {
				del = c.DeleteCredentialForce
			}
			if err := del(ctx, pos[0]); err != nil {
				return err
			}
			return e.out(api.OK{OK: true}, func(t *tabwriter.Writer) { row(t, "credential %s deleted\n", pos[0]) })
		})
	case op == "renew" && len(pos) == 1:
		return e.change(ctx, func(ctx context.Context, c *api.Client) error {
			r, err := c.Renew(ctx, pos[0])
			if err != nil {
				return err
			}
			return e.out(r, func(t *tabwriter.Writer) {
				row(t, "credential %s renewed: the new certificate is in force until %s\n", r.Credential, day(r.NotAfter))
				if r.Warning != "" {
					row(t, "warning\t%s\n", r.Warning)
				}
			})
		})
	case op == "new-certificate" && len(pos) == 1:
		return e.change(ctx, func(ctx context.Context, c *api.Client) error {
			res, err := c.NewCertificate(ctx, pos[0], api.NewCertificate{Days: *days, Subject: *subject})
			if err != nil {
				return err
			}
			if *outF != "" {
				if err := os.WriteFile(*outF, []byte(res.CertificatePEM), 0o644); err != nil {
					return err
				}
			}
			return e.out(res, func(t *tabwriter.Writer) {
				row(t, "credential %s made on the box (%s); the private key stays there\n", res.Credential.Name, res.KeyAlgorithm)
				row(t, "thumbprint (SHA-1)\t%s\nthumbprint (SHA-256)\t%s\nexpires\t%s\ncertificate_file\t%s\n\n", res.ThumbprintSHA1, res.ThumbprintSHA256, day(res.NotAfter), res.Credential.CertificateFile)
				t.Flush()
				fmt.Fprint(e.Stdout, res.CertificatePEM)
				fmt.Fprintln(e.Stdout, "\nNext:")
				for i, s := range res.NextSteps {
					row(e.Stdout, "%d. %s\n", i+1, s)
				}
			})
		})
	case op == "put" && len(pos) == 1:
		p := api.CredentialPut{Kind: *kind}
		if *expires != "" {
			t, err := time.Parse(time.DateOnly, *expires)
			if err != nil {
				return e.fail(usageErr("-expires %q: give YYYY-MM-DD", *expires))
			}
			p.Expires = t.UTC()
		}
		switch *kind {
		case api.KindClientSecret, api.KindPassword:
			b, err := readInput(*from, e.Stdin)
			if err != nil {
				return e.fail(err)
			}
			p.Secret = strings.TrimRight(string(b), "\r\n")
		case api.KindCertificate, api.KindTLSCertificate:
			if *pfxF != "" {
				if p.PFX, err = os.ReadFile(*pfxF); err != nil {
					return e.fail(err)
				}
				if *pfxPw != "" {
					b, err := readInput(*pfxPw, e.Stdin)
					if err != nil {
						return e.fail(err)
					}
					p.PFXPassword = strings.TrimRight(string(b), "\r\n")
				}
			} else {
				if *certF == "" || *keyF == "" {
					return e.fail(usageErr("a certificate needs -cert FILE -key FILE, or -pfx FILE"))
				}
				c, err := os.ReadFile(*certF)
				if err != nil {
					return e.fail(err)
				}
				k, err := os.ReadFile(*keyF)
				if err != nil {
					return e.fail(err)
				}
				p.CertificatePEM, p.KeyPEM = string(c), string(k)
			}
		case api.KindCACertificate:
			if *certF == "" || *keyF != "" || *pfxF != "" {
				return e.fail(usageErr("a ca-certificate needs -cert FILE (the CA certificates, PEM) and no key"))
			}
			c, err := os.ReadFile(*certF)
			if err != nil {
				return e.fail(err)
			}
			p.CertificatePEM = string(c)
		default:
			return e.fail(usageErr("-kind client-secret, password, certificate, ca-certificate or tls-certificate"))
		}
		return e.change(ctx, func(ctx context.Context, c *api.Client) error {
			cr, err := c.PutCredential(ctx, pos[0], p)
			if err != nil {
				return err
			}
			return e.out(cr, func(t *tabwriter.Writer) {
				row(t, "credential %s stored (%s, %s)\n", cr.Name, cr.Kind, cr.Fingerprint)
				if cr.CertificateFile != "" {
					row(t, "certificate_file\t%s\n", cr.CertificateFile)
				}
				if !cr.NotAfter.IsZero() {
					row(t, "expires\t%s\n", day(cr.NotAfter))
				}
			})
		})
	}
	return e.fail(usageErr(credsUsage))
}

const credsUsage = "relayctl creds list | put NAME -kind KIND [-expires YYYY-MM-DD] ... (ca-certificate: -cert CA.pem) | new-certificate NAME [-days 365] [-subject CN=…] [-out FILE] | renew NAME | delete [-force] NAME"

// origin says who made a credential, for the list.
func origin(o string) string {
	switch o {
	case api.OriginBox:
		return "made on the box"
	case api.OriginAdmin:
		return "put by an admin"
	}
	return "-"
}
