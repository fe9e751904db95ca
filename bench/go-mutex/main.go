// go-mutex: etcd's own Go lock (clientv3/concurrency.Mutex, gRPC), timed
// the way bench/transports.lua times locker, for the side-by-side table.
// Built offline against Debian's golang-etcd-server-dev (GOPATH mode).
//
//	go-mutex ENDPOINT uncontended SECONDS
//	go-mutex ENDPOINT contended SECONDS N
//	go-mutex ENDPOINT handover SECONDS HOLD_MS
//	go-mutex ENDPOINT idle SECONDS N   (N clients, ttl 3, each holding a lock)
//
// Prints one line: "cycles N seconds S cpu C [p50 X p99 Y]" (cpu: this
// process's user+system seconds; p50/p99: handover ms).
package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/concurrency"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "go-mutex: "+format+"\n", args...)
	os.Exit(1)
}

func cpu() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

// etcd's CPU seconds so far (user+system), when LOCKER_ETCD_PID names the
// bench's own etcd; -1 otherwise. The idle span reads it around itself, so
// that setting the clients up (and their leases' end) is not counted.
func etcdCPU() float64 {
	b, err := os.ReadFile("/proc/" + os.Getenv("LOCKER_ETCD_PID") + "/stat")
	if err != nil {
		return -1
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndex(s, ")")+1:])
	if len(f) < 13 {
		return -1
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	k, _ := strconv.ParseFloat(f[12], 64)
	return (u + k) / 100 // clock ticks
}

func session(cli *clientv3.Client) *concurrency.Session {
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(10))
	if err != nil {
		fail("session: %v", err)
	}
	return s
}

func cycle(m *concurrency.Mutex) {
	ctx := context.Background()
	if err := m.Lock(ctx); err != nil {
		fail("lock: %v", err)
	}
	if err := m.Unlock(ctx); err != nil {
		fail("unlock: %v", err)
	}
}

func main() {
	if len(os.Args) < 4 {
		fail("usage: go-mutex ENDPOINT uncontended|contended|handover SECONDS [N|HOLD_MS]")
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{os.Args[1]}, DialTimeout: 5 * time.Second})
	if err != nil {
		fail("connect: %v", err)
	}
	defer cli.Close()
	secs, _ := strconv.ParseFloat(os.Args[3], 64)
	arg := 8
	if len(os.Args) > 4 {
		arg, _ = strconv.Atoi(os.Args[4])
	}
	name := fmt.Sprintf("/bench/go-%d/", os.Getpid())
	switch os.Args[2] {
	case "uncontended":
		s := session(cli)
		m := concurrency.NewMutex(s, name)
		cycle(m) // warm
		c0, t0, n := cpu(), time.Now(), 0
		for time.Since(t0).Seconds() < secs {
			cycle(m)
			n++
		}
		fmt.Printf("cycles %d seconds %.4f cpu %.4f\n", n, time.Since(t0).Seconds(), cpu()-c0)
	case "contended":
		var wg sync.WaitGroup
		var mu sync.Mutex
		total := 0
		ms := make([]*concurrency.Mutex, arg)
		for i := range ms {
			ms[i] = concurrency.NewMutex(session(cli), name)
		}
		c0, t0 := cpu(), time.Now()
		for i := range ms {
			wg.Add(1)
			go func(m *concurrency.Mutex) {
				defer wg.Done()
				for time.Since(t0).Seconds() < secs {
					cycle(m)
					mu.Lock()
					total++
					mu.Unlock()
				}
			}(ms[i])
		}
		wg.Wait()
		fmt.Printf("cycles %d seconds %.4f cpu %.4f\n", total, time.Since(t0).Seconds(), cpu()-c0)
	case "handover":
		// two contenders pass the lock back and forth, each holding it
		// HOLD_MS; a handover is from one's Unlock to the other's Lock
		hold := time.Duration(arg) * time.Millisecond
		a := concurrency.NewMutex(session(cli), name)
		b := concurrency.NewMutex(session(cli), name)
		ctx := context.Background()
		var lat []float64
		var released time.Time
		var mu sync.Mutex
		c0, t0 := cpu(), time.Now()
		var wg sync.WaitGroup
		for _, m := range []*concurrency.Mutex{a, b} {
			wg.Add(1)
			go func(m *concurrency.Mutex) {
				defer wg.Done()
				for time.Since(t0).Seconds() < secs {
					if err := m.Lock(ctx); err != nil {
						fail("lock: %v", err)
					}
					mu.Lock()
					if !released.IsZero() {
						lat = append(lat, float64(time.Since(released).Microseconds())/1000)
					}
					mu.Unlock()
					time.Sleep(hold)
					mu.Lock()
					released = time.Now()
					mu.Unlock()
					if err := m.Unlock(ctx); err != nil {
						fail("unlock: %v", err)
					}
				}
			}(m)
		}
		wg.Wait()
		sort.Float64s(lat)
		p := func(q float64) float64 {
			if len(lat) == 0 {
				return 0
			}
			return lat[int(q*float64(len(lat)-1))]
		}
		fmt.Printf("cycles %d seconds %.4f cpu %.4f p50 %.3f p99 %.3f\n", len(lat),
			time.Since(t0).Seconds(), cpu()-c0, p(0.5), p(0.99))
	case "idle":
		// each session renews its lease on its own LeaseKeepAlive stream
		// every TTL/3; the renewals are counted from the keepalive channel
		var count int64
		var mu sync.Mutex
		for i := 0; i < arg; i++ {
			// a client each, as each locker client is (a fleet: a process each)
			cli, err := clientv3.New(clientv3.Config{Endpoints: []string{os.Args[1]}, DialTimeout: 5 * time.Second})
			if err != nil {
				fail("connect: %v", err)
			}
			resp, err := cli.Grant(context.Background(), 3)
			if err != nil {
				fail("grant: %v", err)
			}
			s, err := concurrency.NewSession(cli, concurrency.WithLease(resp.ID))
			if err != nil {
				fail("session: %v", err)
			}
			m := concurrency.NewMutex(s, fmt.Sprintf("%sidle%d/", name, i))
			if err := m.Lock(context.Background()); err != nil {
				fail("lock: %v", err)
			}
			ch, err := cli.KeepAlive(context.Background(), resp.ID)
			if err != nil {
				fail("keepalive: %v", err)
			}
			go func() {
				for range ch {
					mu.Lock()
					count++
					mu.Unlock()
				}
			}()
		}
		time.Sleep(500 * time.Millisecond)
		mu.Lock()
		k0 := count
		mu.Unlock()
		c0, t0, e0 := cpu(), time.Now(), etcdCPU()
		time.Sleep(time.Duration(secs * float64(time.Second)))
		mu.Lock()
		k1 := count
		mu.Unlock()
		e1 := etcdCPU()
		extra := ""
		if e0 >= 0 && e1 >= 0 {
			extra = fmt.Sprintf(" etcd %.4f", e1-e0)
		}
		fmt.Printf("cycles %d seconds %.4f cpu %.4f%s\n", k1-k0, time.Since(t0).Seconds(), cpu()-c0, extra)
	default:
		fail("unknown mode %s", os.Args[2])
	}
}
