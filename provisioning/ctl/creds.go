package ctl

import (
	"context"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/siterelay/siterelay/provisioning/api"
)

func (e *env) creds(ctx context.Context, args []string) int {
	if len(args) == 0 {
		return e.fail(usageErr("relayctl creds list|put NAME ...|delete [-force] NAME"))
	}
	op := args[0]
	fs := sub("creds "+op, e)
	kind := fs.String("kind", "", "client-secret, password or certificate")
	from := fs.String("from", "-", "read the secret from this file (- for stdin); never a flag value")
	certF := fs.String("cert", "", "certificate PEM file")
	keyF := fs.String("key", "", "private key PEM file")
	pfxF := fs.String("pfx", "", "PFX (PKCS #12) file")
	pfxPw := fs.String("pfx-password-from", "", "read the PFX password from this file (- for stdin)")
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
				fmt.Fprintln(t, "NAME\tKIND\tFINGERPRINT\tUPDATED\tEXPIRES\tLAST USED")
				for _, cr := range l {
					fmt.Fprintf(t, "%s\t%s\t%.23s\t%s\t%s\t%s\n", cr.Name, cr.Kind, cr.Fingerprint, day(cr.Updated), day(cr.NotAfter), day(cr.LastUsed))
				}
			})
		})
	case op == "delete" && len(pos) == 1:
		return e.call(ctx, func(ctx context.Context, c *api.Client) error {
			del := c.DeleteCredential
			if *force {
				del = c.DeleteCredentialForce
			}
			if err := del(ctx, pos[0]); err != nil {
				return err
			}
			return e.out(api.OK{OK: true}, func(t *tabwriter.Writer) { fmt.Fprintf(t, "credential %s deleted\n", pos[0]) })
		})
	case op == "put" && len(pos) == 1:
		p := api.CredentialPut{Kind: *kind}
		switch *kind {
		case api.KindClientSecret, api.KindPassword:
			b, err := readInput(*from, e.Stdin)
			if err != nil {
				return e.fail(err)
			}
			p.Secret = strings.TrimRight(string(b), "\r\n")
		case api.KindCertificate:
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
		default:
			return e.fail(usageErr("-kind client-secret, password or certificate"))
		}
		return e.call(ctx, func(ctx context.Context, c *api.Client) error {
			cr, err := c.PutCredential(ctx, pos[0], p)
			if err != nil {
				return err
			}
			return e.out(cr, func(t *tabwriter.Writer) {
				fmt.Fprintf(t, "credential %s stored (%s, %s)\n", cr.Name, cr.Kind, cr.Fingerprint)
				if cr.CertificateFile != "" {
					fmt.Fprintf(t, "certificate_file\t%s\nexpires\t%s\n", cr.CertificateFile, day(cr.NotAfter))
				}
			})
		})
	}
	return e.fail(usageErr("relayctl creds list|put NAME ...|delete [-force] NAME"))
}
