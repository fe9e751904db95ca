// go-elect: etcd's own Go election (clientv3/concurrency.Election), for the
// election interop spec. Built offline against Debian's golang-etcd-server-dev.
//
//	go-elect ENDPOINT campaign NAME VALUE [PROCLAIM...]
//	    campaigns; prints "leader VALUE" once elected; each SIGUSR1 proclaims
//	    the next PROCLAIM and prints "proclaimed V"; SIGTERM resigns, prints
//	    "resigned" and exits 0
//	go-elect ENDPOINT observe NAME
//	    prints "leader VALUE" for each leader change until SIGTERM
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/concurrency"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "go-elect: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	if len(os.Args) < 4 {
		fail("usage: go-elect ENDPOINT campaign NAME VALUE [PROCLAIM...] | observe NAME")
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{os.Args[1]}, DialTimeout: 5 * time.Second})
	if err != nil {
		fail("connect: %v", err)
	}
	defer cli.Close()
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(5))
	if err != nil {
		fail("session: %v", err)
	}
	e := concurrency.NewElection(s, os.Args[3])
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGTERM)
	switch os.Args[2] {
	case "campaign":
		if len(os.Args) < 5 {
			fail("campaign needs NAME VALUE")
		}
		if err := e.Campaign(context.Background(), os.Args[4]); err != nil {
			fail("campaign: %v", err)
		}
		fmt.Printf("leader %s\n", os.Args[4])
		next := os.Args[5:]
		for sig := range sigs {
			if sig == syscall.SIGTERM {
				if err := e.Resign(context.Background()); err != nil {
					fail("resign: %v", err)
				}
				fmt.Println("resigned")
				return
			}
			if len(next) > 0 {
				if err := e.Proclaim(context.Background(), next[0]); err != nil {
					fail("proclaim: %v", err)
				}
				fmt.Printf("proclaimed %s\n", next[0])
				next = next[1:]
			}
		}
	case "observe":
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			for sig := range sigs {
				if sig == syscall.SIGTERM {
					cancel()
				}
			}
		}()
		for resp := range e.Observe(ctx) {
			if len(resp.Kvs) > 0 {
				fmt.Printf("leader %s\n", resp.Kvs[0].Value)
			}
		}
	default:
		fail("unknown mode %s", os.Args[2])
	}
}
