// Command closedloop is the benchmark's closed-loop load generator: independent
// requesters, each waiting for its reply before it sends its next request, as services
// do, spread over a few NATS connections (nats.go).
//
// Requester r uses connection r % -connections. It has an inbox of its own, with a
// synchronous subscription to <inbox>.*, and sends request n with the reply subject
// <inbox>.<n>: a reply goes from the connection's reader goroutine straight to the
// requester that waits for it, with no goroutine between them, which keeps the
// generator's own CPU per request low. Publishing goes through nats.go's buffered writer
// and flusher, as in any nats.go service, so requesters that share a connection may share
// a write. On the wire it is the traffic of nc.Request: one PUB with a reply subject, one
// MSG back.
//
// Request n (0 <= n < -requests) is taken from a shared counter by whichever requester is
// free; its body is that of the Python benchmark's payloads() for client n % -clients,
// or, with -named, that of named_payloads() (request_id and timestamp only). A reply that
// does not carry "access_token" is an error. A request with no reply within -wait (or
// with nobody subscribed) is lost, an error too, and its requester stops (so a dead
// responder ends the run).
//
// It prints one JSON object: requests, answered, errors (lost ones included), first_error
// (the first error reply's start, or why a request was lost), seconds
// (from the first send to the last reply), and cpu_seconds (this process's user and
// system CPU over the run, getrusage). With -latencies FILE it writes each answered
// request's latency in seconds as little-endian float64, in request order.
package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
)

type summary struct {
	Requests    int     `json:"requests"`
	Answered    int64   `json:"answered"`
	Errors      int64   `json:"errors"`
	Stray       int64   `json:"stray"`
	FirstError  string  `json:"first_error,omitempty"`
	Seconds     float64 `json:"seconds"`
	CPUSeconds  float64 `json:"cpu_seconds"`
	Connections int     `json:"connections"`
	Concurrency int     `json:"concurrency"`
}

// firstErrorText is the first error's text, or "" when there was none.
func firstErrorText(v *atomic.Value) string {
	if text, ok := v.Load().(string); ok {
		return text
	}
	return ""
}

func min(a, b int) int {
	if a < b {
		return a
	}
	return b
}

func cpuSeconds() float64 {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		fail("getrusage: %v", err)
	}
	return float64(usage.Utime.Nano()+usage.Stime.Nano()) / 1e9
}

// latest raises *at to t unless it is later already.
func latest(at *int64, t int64) {
	for {
		old := atomic.LoadInt64(at)
		if t <= old || atomic.CompareAndSwapInt64(at, old, t) {
			return
		}
	}
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "closedloop: "+format+"\n", args...)
	os.Exit(1)
}

// body appends request n's body, byte for byte what Python's json.dumps makes of the
// benchmark's payloads (or named_payloads) for the same n.
func body(buf []byte, n int64, clients int64, named bool) []byte {
	buf = append(buf, `{"request_id": "r`...)
	buf = strconv.AppendInt(buf, n, 10)
	if !named {
		client := n % clients
		buf = append(buf, `", "client_id": "bench-`...)
		buf = appendPadded(buf, client)
		buf = append(buf, `", "client_secret": "bench-secret-`...)
		buf = appendPadded(buf, client)
	}
	return append(buf, `", "timestamp": "2026-11-29T12:00:00Z"}`...)
}

func appendPadded(buf []byte, i int64) []byte {
	if i < 10 {
		buf = append(buf, '0', '0')
	} else if i < 100 {
		buf = append(buf, '0')
	}
	return strconv.AppendInt(buf, i, 10)
}

func main() {
	url := flag.String("url", nats.DefaultURL, "NATS server")
	subject := flag.String("subject", "token.request", "subject to send the requests on")
	connections := flag.Int("connections", 2, "NATS connections the requesters share")
	concurrency := flag.Int("concurrency", 16, "requesters, each with one request outstanding")
	requests := flag.Int("requests", 100000, "requests in all")
	clients := flag.Int64("clients", 100, "distinct client ids the requests cycle over")
	named := flag.Bool("named", false, "named-credential bodies: request_id and timestamp only")
	latencies := flag.String("latencies", "", "file for the latencies (float64 seconds, little-endian)")
	wait := flag.Duration("wait", 10*time.Second, "a request with no reply for this long is lost")
	flag.Parse()
	if *connections < 1 || *concurrency < 1 || *requests < 1 || *clients < 1 {
		fail("-connections, -concurrency, -requests and -clients must be positive")
	}

	conns := make([]*nats.Conn, *connections)
	for c := range conns {
		nc, err := nats.Connect(*url, nats.Name(fmt.Sprintf("bench-closed-loop-%d", c)),
			nats.NoReconnect())
		if err != nil {
			fail("connect %s: %v", *url, err)
		}
		defer nc.Close()
		conns[c] = nc
	}
	// Each requester has its own inbox and a synchronous subscription to it: a reply goes
	// from the connection's reader goroutine straight to the requester waiting for it.
	subs := make([]*nats.Subscription, *concurrency)
	inboxes := make([]string, *concurrency)
	for r := range subs {
		inboxes[r] = nats.NewInbox() + "."
		sub, err := conns[r%len(conns)].SubscribeSync(inboxes[r] + "*")
		if err != nil {
			fail("subscribe: %v", err)
		}
		subs[r] = sub
	}
	for _, nc := range conns {
		if err := nc.Flush(); err != nil { // the subscriptions are in place
			fail("flush: %v", err)
		}
	}

	total := int64(*requests)
	lat := make([]float64, total)
	var next, answered, errors, stray, lastReply int64
	var firstError atomic.Value // the first error reply's body (its start), for the report
	start := make(chan struct{})
	var running sync.WaitGroup
	for r := 0; r < *concurrency; r++ {
		running.Add(1)
		go func(r int) {
			defer running.Done()
			nc, sub, inbox := conns[r%len(conns)], subs[r], inboxes[r]
			var buf, subj []byte
			<-start
			for {
				n := atomic.AddInt64(&next, 1) - 1
				if n >= total {
					return
				}
				buf = body(buf[:0], n, *clients, *named)
				subj = strconv.AppendInt(append(subj[:0], inbox...), n, 10)
				sent := time.Now()
				if err := nc.PublishRequest(*subject, string(subj), buf); err != nil {
					fail("publish: %v", err)
				}
				for {
					m, err := sub.NextMsg(*wait)
					if err == nats.ErrTimeout || err == nats.ErrNoResponders {
						firstError.CompareAndSwap(nil, fmt.Sprintf("no reply: %v", err))
						return // this requester's request is lost: it stops
					} else if err != nil {
						fail("next reply: %v", err)
					}
					at := time.Now()
					if got, _ := strconv.ParseInt(m.Subject[len(inbox):], 10, 64); got != n {
						atomic.AddInt64(&stray, 1) // a late reply to an earlier request
						continue
					}
					lat[n] = at.Sub(sent).Seconds()
					if !bytes.Contains(m.Data, []byte(`"access_token"`)) {
						atomic.AddInt64(&errors, 1)
						firstError.CompareAndSwap(nil, string(m.Data[:min(len(m.Data), 300)]))
					}
					atomic.AddInt64(&answered, 1)
					latest(&lastReply, at.UnixNano())
					break
				}
			}
		}(r)
	}

	cpuStarted, started := cpuSeconds(), time.Now()
	atomic.StoreInt64(&lastReply, started.UnixNano())
	close(start)
	running.Wait()
	cpu := cpuSeconds() - cpuStarted
	got := atomic.LoadInt64(&answered)
	elapsed := float64(atomic.LoadInt64(&lastReply)-started.UnixNano()) / 1e9

	if *latencies != "" {
		out := make([]byte, 0, 8*len(lat))
		for _, v := range lat {
			if v > 0 { // answered: a round trip takes more than a nanosecond
				out = binary.LittleEndian.AppendUint64(out, math.Float64bits(v))
			}
		}
		if err := os.WriteFile(*latencies, out, 0o600); err != nil {
			fail("write %s: %v", *latencies, err)
		}
	}
	result := summary{Requests: *requests, Answered: got,
		Errors: atomic.LoadInt64(&errors) + total - got, Stray: atomic.LoadInt64(&stray),
		FirstError: firstErrorText(&firstError),
		Seconds:    elapsed,
		CPUSeconds: cpu, Connections: *connections, Concurrency: *concurrency}
	if err := json.NewEncoder(os.Stdout).Encode(result); err != nil {
		fail("write the summary: %v", err)
	}
}
