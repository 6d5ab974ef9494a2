//go:build integration

package vmtest

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"tailscale.com/tailcfg"
	"tailscale.com/tsnet"
	"tailscale.com/tstest/integration/testcontrol"
	"tailscale.com/types/key"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/provtest"
	"github.com/siterelay/siterelay/relay/upstream/m365test"
)

// replacedRetry is the delivery.max_retry the admin puts on the first
// card over the tailnet: not the site file's, so only `relayctl apply`
// can bring it to the new card.
const replacedRetry = "6s"

// replaceCard is the replace-a-box procedure of docs/replace-card.md and
// docs/fleet.md, run at the end of TestVMFirstBoot on the box v (which
// delivers, its credentials in place): the admin changes its
// configuration over the tailnet and keeps it with `relayctl pull`; the
// card dies for good; the admin removes its machine from the tailnet; a
// new card (img2: the same site file, a new join key) boots and joins
// under the same name; `relayctl apply -dry-run` shows its difference,
// `relayctl apply` restores the configuration, `relayctl creds put` the
// credentials, and a device's mail reaches the tenant. It returns the
// new card's VM, power-on to joined and the apply's time.
func replaceCard(t *testing.T, tn *provtest.Tailnet, admin *tsnet.Server, v *vm, img2, dir string, tt *m365test.Tenant, secretFile, caFile string) (*vm, time.Duration, time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	old := joinedNode(tn.Control, "relay-vmtest")
	c := api.NewClient(old.Addresses[0].Addr().String(), admin.Dial)

	// A change made on the box, not in the site file.
	doc, err := c.Config(ctx)
	if err != nil {
		t.Fatalf("config of the first card: %v", err)
	}
	cfg := map[string]any{}
	if err := json.Unmarshal(doc.Config, &cfg); err != nil {
		t.Fatal(err)
	}
	del, _ := cfg["delivery"].(map[string]any)
	if del == nil {
		del = map[string]any{}
		cfg["delivery"] = del
	}
	del["max_retry"] = replacedRetry
	b, _ := json.Marshal(cfg)
	changed := filepath.Join(dir, "changed.json")
	if err := os.WriteFile(changed, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if r := <-relayctl(admin, "config", "put", changed); r.code != 0 {
		t.Fatalf("config put on the first card: exit %d\n%s%s", r.code, r.errs, r.out)
	}
	sites := filepath.Join(dir, "sites")
	r := <-relayctl(admin, "pull", sites)
	if r.code != 0 {
		t.Fatalf("relayctl pull: exit %d\n%s%s", r.code, r.errs, r.out)
	}
	t.Logf("relayctl pull:\n%s", r.out)
	files, _ := filepath.Glob(filepath.Join(sites, "*.json"))
	if len(files) != 1 || maxRetry(t, readFile(t, files[0])) != replacedRetry {
		t.Fatalf("relayctl pull wrote %v, want one site file with delivery.max_retry %s", files, replacedRetry)
	}

	// The card dies for good, and the admin removes its machine.
	v.kill()
	removeNode(t, tn.Control, old.Key)

	power := time.Now()
	v2, _ := boot(t, img2, dir, "replace-boot")
	t.Cleanup(v2.kill)
	box := waitJoined(t, tn, "relay-vmtest", dir)
	joined := time.Since(power)
	if box.StableID == old.StableID || box.Name != old.Name {
		t.Errorf("the new card is node %s named %q; want a new node under the dead one's name %q (node %s)", box.StableID, box.Name, old.Name, old.StableID)
	}
	c2 := api.NewClient(box.Addresses[0].Addr().String(), admin.Dial)
	statusAgain(t, c2, dir)

	dry := <-relayctl(admin, "apply", sites, "-dry-run")
	if dry.code != 0 || !strings.Contains(dry.out, "delivery.max_retry") {
		t.Errorf("relayctl apply -dry-run: exit %d, want delivery.max_retry among the changes:\n%s%s", dry.code, dry.errs, dry.out)
	}
	t.Logf("relayctl apply -dry-run on the new card:\n%s", dry.out)
	start := time.Now()
	ap := <-relayctl(admin, "apply", sites, "-soak", "2s")
	applied := time.Since(start)
	if ap.code != 0 {
		t.Fatalf("relayctl apply: exit %d\n%s%s", ap.code, ap.errs, ap.out)
	}
	t.Logf("relayctl apply:\n%s%s", ap.errs, ap.out)
	got, err := c2.Config(ctx)
	if err != nil {
		t.Fatalf("config of the new card: %v", err)
	}
	if maxRetry(t, got.Config) != replacedRetry {
		t.Errorf("after apply the new card runs %s, want delivery.max_retry %s", got.Config, replacedRetry)
	}
	if again := <-relayctl(admin, "apply", sites, "-dry-run"); again.code != 0 || !strings.Contains(again.out, "already") {
		t.Errorf("relayctl apply -dry-run after the apply: exit %d, want the site's file run already:\n%s%s", again.code, again.errs, again.out)
	}

	// The credentials lived only on the dead card.
	for _, args := range [][]string{
		{"creds", "put", "tenant-ca", "-kind", "ca-certificate", "-cert", caFile},
		{"creds", "put", "m365-client-secret", "-kind", "client-secret", "-from", secretFile},
	} {
		if r := <-relayctl(admin, args...); r.code != 0 {
			t.Fatalf("%v on the new card: exit %d\n%s%s", args, r.code, r.errs, r.out)
		}
	}
	swaks(t, v2.smtp, "from the new card", "marker-replaced-card")
	waitTenant(t, tt, "marker-replaced-card", deliveryTimeout)
	return v2, joined, applied
}

// maxRetry is delivery.max_retry in the configuration b.
func maxRetry(t *testing.T, b []byte) string {
	t.Helper()
	var doc struct {
		Delivery struct {
			MaxRetry string `json:"max_retry"`
		} `json:"delivery"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("a configuration: %v\n%s", err, b)
	}
	return doc.Delivery.MaxRetry
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// removeNode deletes the node k from the test control server, as an
// admin removes a dead machine in the admin console. testcontrol has no
// call for it, so this reaches its node table (unexported fields mu and
// nodes) by reflection; the next netmap (the new card's join) no longer
// lists it to any peer.
func removeNode(t *testing.T, s *testcontrol.Server, k key.NodePublic) {
	t.Helper()
	rv := reflect.ValueOf(s).Elem()
	mu, nodes := rv.FieldByName("mu"), rv.FieldByName("nodes")
	if !mu.IsValid() || !nodes.IsValid() || mu.Type() != reflect.TypeOf(sync.Mutex{}) ||
		nodes.Type() != reflect.TypeOf(map[key.NodePublic]*tailcfg.Node{}) {
		t.Fatal("testcontrol.Server has no mu and nodes fields of the expected types: removeNode needs a new way in")
	}
	m := (*sync.Mutex)(unsafe.Pointer(mu.UnsafeAddr()))
	table := (*map[key.NodePublic]*tailcfg.Node)(unsafe.Pointer(nodes.UnsafeAddr()))
	m.Lock()
	delete(*table, k)
	m.Unlock()
	// testcontrol numbers a new node len(nodes)+1 (its ID and address):
	// a placeholder keeps the count, so the new card does not get the
	// address of a node still there. It has no host name and no tag.
	s.AddFakeNode()
	if joinedNode(s, "relay-vmtest") != nil && joinedNode(s, "relay-vmtest").Key == k {
		t.Fatal("the dead node is still in the test control server")
	}
}
