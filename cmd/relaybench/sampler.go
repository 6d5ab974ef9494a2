package main

import (
	"math"
	"slices"
	"sync"
	"time"
)

// sampler records the largest memory sums seen in a process tree. Finding
// the tree means reading every process's stat in /proc, which costs the
// harness (and so the relay, on two cores) more than the memory reads, so
// the tree is found again only every rescan-th sample.
type sampler struct {
	once sync.Once
	quit chan struct{}
	done chan struct{}
	root int
	pids []int
	mu   sync.Mutex
	peak usage
}

const rescan = 4

func startSampler(root int, every time.Duration) *sampler {
	s := &sampler{quit: make(chan struct{}), done: make(chan struct{}), root: root}
	s.sample(true)
	go func() {
		defer close(s.done)
		tk := time.NewTicker(every)
		defer tk.Stop()
		for i := 1; ; i++ {
			select {
			case <-s.quit:
				return
			case <-tk.C:
				s.sample(i%rescan == 0)
			}
		}
	}()
	return s
}

func (s *sampler) sample(find bool) {
	if find || s.pids == nil {
		if pids, err := descendants(s.root); err == nil {
			s.pids = pids
		}
	}
	u := memUsage(s.pids)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.peak.RSSKiB = max(s.peak.RSSKiB, u.RSSKiB)
	s.peak.PSSKiB = max(s.peak.PSSKiB, u.PSSKiB)
	s.peak.AnonKiB = max(s.peak.AnonKiB, u.AnonKiB)
	s.peak.Procs = max(s.peak.Procs, u.Procs)
}

// stop ends sampling after one last sample and returns the peaks.
func (s *sampler) stop() usage {
	s.once.Do(func() {
		close(s.quit)
		<-s.done
		s.sample(true)
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak
}

// percentile is the nearest-rank percentile of d (which it sorts).
func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	i := int(math.Ceil(p*float64(len(d)))) - 1
	return d[min(max(i, 0), len(d)-1)]
}
