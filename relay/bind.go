package relay

import (
	"net"
	"sync"
	"time"
)

// pendingListener stands for a listener that could not bind when the
// relay started (Deps.BindRetry): the others serve, this one is tried
// again in the background, and Accept blocks until it is bound. The
// status shows it with the bind error until then.
type pendingListener struct {
	network, addr string

	ready chan struct{} // closed once bound
	done  chan struct{} // closed by Close
	once  sync.Once

	mu  sync.Mutex
	l   net.Listener
	err error // the last bind error
}

// listenOrRetry binds as listen does; an address that cannot be bound
// now becomes a pendingListener retried at retry's times.
func listenOrRetry(listen func(network, addr string) (net.Listener, error), retry func(attempt int) <-chan time.Time, log func(addr string, err error)) func(network, addr string) (net.Listener, error) {
	return func(network, addr string) (net.Listener, error) {
		l, err := listen(network, addr)
		if err == nil {
			return l, nil
		}
		p := &pendingListener{network: network, addr: addr, ready: make(chan struct{}), done: make(chan struct{}), err: err}
		log(addr, err)
		go p.retry(listen, retry)
		return p, nil
	}
}

func (p *pendingListener) retry(listen func(network, addr string) (net.Listener, error), after func(int) <-chan time.Time) {
	for attempt := 1; ; attempt++ {
		select {
		case <-p.done:
			return
		case <-after(attempt):
		}
		l, err := listen(p.network, p.addr)
		p.mu.Lock()
		select {
		case <-p.done: // closed meanwhile
			p.mu.Unlock()
			if l != nil {
				l.Close()
			}
			return
		default:
		}
		if err != nil {
			p.err = err
			p.mu.Unlock()
			continue
		}
		p.l, p.err = l, nil
		p.mu.Unlock()
		close(p.ready)
		return
	}
}

// bindError is the last bind error while unbound; nil once bound.
func (p *pendingListener) bindError() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

func (p *pendingListener) Accept() (net.Conn, error) {
	select {
	case <-p.ready:
		return p.l.Accept()
	case <-p.done:
		return nil, net.ErrClosed
	}
}

func (p *pendingListener) Close() error {
	p.once.Do(func() { close(p.done) })
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.l != nil {
		return p.l.Close()
	}
	return nil
}

// Addr is the bound address, or the configured one until then.
func (p *pendingListener) Addr() net.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.l != nil {
		return p.l.Addr()
	}
	if a, err := net.ResolveTCPAddr(p.network, p.addr); err == nil {
		return a
	}
	return &net.TCPAddr{}
}
