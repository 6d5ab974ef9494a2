package inbound

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/spool"
)

// sendAsDevice sends one message on its own connection from 127.0.0.1, as
// a printer does, and reports the final reply.
func sendAsDevice(t testing.TB, addr string, i int) string {
	c, err := dialFrom(t, "127.0.0.1", addr)
	if err != nil {
		return "dial: " + err.Error()
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	line := func() string {
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				return "read: " + err.Error()
			}
			if len(l) < 4 || l[3] != '-' {
				return l
			}
		}
	}
	if l := line(); !strings.HasPrefix(l, "220") {
		return l
	}
	fmt.Fprintf(c, "EHLO mfp\r\nMAIL FROM:<mfp@plant.example>\r\nRCPT TO:<ops@example.com>\r\nDATA\r\n")
	for _, want := range []string{"250", "250", "250", "354"} {
		if l := line(); !strings.HasPrefix(l, want) {
			return l
		}
	}
	fmt.Fprintf(c, "Subject: scan %d\r\n\r\n%s\r\n.\r\nQUIT\r\n", i, strings.Repeat("page data ", 400))
	return line()
}

// TestFloodKeepsDeviceRate is the figure for a connection flood: a device
// sends messages on fresh connections from 127.0.0.1 while 20,000
// connections from 200 other loopback addresses (1,500 at a time, from
// another process) try to hold sessions open on the same listener. It prints the device's rate alone, while the flood
// connects, and while the flood holds its sessions, the last paired batch
// by batch with a second, unflooded listener in the same process (the
// machine is shared: paired batches see the same load). It asserts only
// that every message of the device was accepted.
func TestFloodKeepsDeviceRate(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("a 20,000-connection flood: not in -short or -race runs")
	}
	const (
		floodConns   = 20000
		floodAddrs   = 200
		floodWorkers = 1500 // more than limits.max_connections: the cap is reached
		batch        = 40   // messages
	)
	listener := func() (*fixture, *Server) {
		sp, err := spool.Open(relaytest.StateDir(t), spool.Options{MinFreeBytes: 1, MaxMessages: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sp.Close() })
		pol := newSitePolicy(t, []string{"127.0.0.0/8"}, func(c *config.Config) { c.Limits.MessagesPerMinute = new(0) })
		return startServer(t, func(o *Options) {
			o.Policy, o.Spool, o.MaxConnections = pol, sp, DefaultMaxConnections
			o.MaxMessageBytes = 1 << 20
		})
	}
	f, srv := listener()
	quiet, _ := listener()

	run := func(addr string, n int, while func() bool) float64 {
		start := time.Now()
		sent := 0
		for i := 0; i < n && (while == nil || while()); i++ {
			if got := sendAsDevice(t, addr, i); !strings.HasPrefix(got, "250") {
				t.Fatalf("device message %d: %q", i, got)
			}
			sent++
		}
		return float64(sent) / time.Since(start).Seconds()
	}
	// paired runs batches alternately on the flooded and the quiet
	// listener (in the order ABBA..., so that neither always goes first)
	// and returns the median rate of each.
	paired := func(rounds int) (flooded, alone float64) {
		var a, b []float64
		for i := range rounds {
			if i%2 == 0 {
				a = append(a, run(f.addr, batch, nil))
				b = append(b, run(quiet.addr, batch, nil))
			} else {
				b = append(b, run(quiet.addr, batch, nil))
				a = append(a, run(f.addr, batch, nil))
			}
		}
		slices.Sort(a)
		slices.Sort(b)
		return a[rounds/2], b[rounds/2]
	}
	before, beforeQuiet := paired(5)
	t.Logf("device alone: %.0f messages/s (median of 5 batches of %d; %.0f on the second listener)", before, batch, beforeQuiet)

	// The flood runs in its own process (this test binary again, see
	// TestFloodHelper), as it would on another machine: its goroutines do
	// not share the relay's scheduler.
	cmd := exec.Command(os.Args[0], "-test.run=^TestFloodHelper$")
	cmd.Env = append(os.Environ(), "SITERELAY_FLOOD="+fmt.Sprintf("%s,%d,%d,%d", f.addr, floodConns, floodAddrs, floodWorkers))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			stdin.Close()
			cmd.Wait()
		}
	}
	defer stop()
	var made atomic.Bool
	lines := make(chan string, 2)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "flood ") {
				made.Store(true)
				lines <- sc.Text()
			}
		}
		close(lines)
	}()

	// While the flood connects: each of its workers reconnects as soon as
	// it is refused, so the listen queue always holds hundreds of flood
	// connections ahead of each of the device's.
	relaytest.Eventually(t, "the flood at limits.max_connections", func() bool { return srv.Sessions() >= DefaultMaxConnections-50 })
	t1 := time.Now()
	connecting := run(f.addr, 1<<20, func() bool { return !made.Load() })
	t.Logf("device while the flood connects: %.0f messages/s for %v (%.0f %% of alone)",
		connecting, time.Since(t1).Round(time.Millisecond), 100*connecting/before)
	summary, ok := <-lines
	if !ok {
		t.Fatal("the flood helper ended without its summary")
	}
	t.Logf("%s", summary)

	// The flood's 20,000 connections made, it fills the listener again
	// (the device displaced some) and holds what it has: the attack of the
	// issue, connections opened and held.
	io.WriteString(stdin, "top up\n")
	summary, ok = <-lines
	if !ok {
		t.Fatal("the flood helper ended without topping up")
	}
	t.Logf("%s", summary)
	flooded, alone := paired(7)
	t.Logf("device with the flood's sessions held (listener at %d of %d sessions): %.0f messages/s; on the unflooded listener at the same time %.0f: %.0f %%",
		srv.Sessions(), DefaultMaxConnections, flooded, alone, 100*flooded/alone)
	stop()
	waitIdle(t, srv)
}

// TestFloodHelper is the flood of TestFloodKeepsDeviceRate, run in a
// process of its own: workers connect from many loopback addresses, read
// the first line, hold what got the banner until the relay closes it, and
// reconnect at once, until the count is made; then it holds what it has
// until stdin closes.
func TestFloodHelper(t *testing.T) {
	spec := os.Getenv("SITERELAY_FLOOD")
	if spec == "" {
		t.Skip("the flood helper process of TestFloodKeepsDeviceRate")
	}
	var addr string
	var conns, addrs, workers int64
	if _, err := fmt.Sscanf(strings.ReplaceAll(spec, ",", " "), "%s %d %d %d", &addr, &conns, &addrs, &workers); err != nil {
		t.Fatal(err)
	}
	var tickets, held, refused atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	open := map[net.Conn]bool{}
	for range workers {
		wg.Go(func() {
			for k := tickets.Add(1); k <= conns; k = tickets.Add(1) {
				c, err := dialFrom(t, fmt.Sprintf("127.0.1.%d", 2+k%addrs), addr)
				if err != nil {
					refused.Add(1)
					continue
				}
				mu.Lock()
				open[c] = true
				mu.Unlock()
				c.SetDeadline(time.Now().Add(5 * time.Minute))
				b := make([]byte, 512)
				if n, _ := c.Read(b); n >= 3 && string(b[:3]) == "220" {
					held.Add(1)
					if tickets.Load() >= conns {
						break // the last ones stay open
					}
					io.Copy(io.Discard, c) // hold it until the relay closes it
				} else {
					refused.Add(1)
				}
				c.Close()
				mu.Lock()
				delete(open, c)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	fmt.Printf("flood made: %d connections, %d got the banner (held until displaced), %d refused at accept\n", conns, held.Load(), refused.Load())
	in := bufio.NewScanner(os.Stdin)
	if in.Scan() && in.Text() == "top up" {
		// Connect until the relay refuses 50 times in a row (at most
		// 2,000 more), and hold every connection that gets the banner.
		n, got := 0, 0
		for miss := 0; miss < 50 && n < 2000; n++ {
			c, err := dialFrom(t, fmt.Sprintf("127.0.1.%d", 2+int64(n)%addrs), addr)
			if err != nil {
				miss++
				continue
			}
			c.SetDeadline(time.Now().Add(5 * time.Minute))
			b := make([]byte, 512)
			if n, _ := c.Read(b); n >= 3 && string(b[:3]) == "220" {
				got, miss = got+1, 0
				mu.Lock()
				open[c] = true
				mu.Unlock()
			} else {
				miss++
				c.Close()
			}
		}
		fmt.Printf("flood topped up: %d more connections, %d held\n", n, got)
	}
	io.Copy(io.Discard, os.Stdin)
	mu.Lock()
	for c := range open {
		c.Close()
	}
	mu.Unlock()
}

// TestIdleSessionMemory prints what an idle session costs: N sessions that
// have said EHLO and wait, measured as Go heap and stacks in use, against
// the same number of bare accepted connections with a goroutine blocked in
// Read (the floor of any Go server). Client sides are in both figures.
func TestIdleSessionMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("measurement")
	}
	const n = 500
	inUse := func() uint64 {
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapInuse + m.StackInuse
	}
	measure := func(addr string, ehlo bool) float64 {
		before := inUse()
		conns := make([]*raw, n)
		for i := range conns {
			conns[i] = dialRaw(t, addr)
			if ehlo {
				conns[i].cmd("EHLO idle", "250")
			}
		}
		after := inUse()
		for _, r := range conns {
			r.c.Close()
		}
		return float64(after-before) / n
	}

	bare, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer bare.Close()
	go func() {
		for {
			c, err := bare.Accept()
			if err != nil {
				return
			}
			go func() {
				c.Write([]byte("220 bare\r\n"))
				var b [1]byte
				c.Read(b[:])
				c.Close()
			}()
		}
	}()
	floor := measure(bare.Addr().String(), false)

	f, srv := startServer(t, func(o *Options) { o.MaxConnections = 2 * n })
	each := measure(f.addr, true)
	waitIdle(t, srv)
	t.Logf("idle session after EHLO: %.1f KiB each (server and client side); bare connection with a blocked reader: %.1f KiB; the session's own share: %.1f KiB",
		each/1024, floor/1024, (each-floor)/1024)
}
