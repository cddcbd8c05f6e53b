package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/fabric"
)

// The closed-loop runs: many single-message publishers, each waiting for its acknowledgement
// (after fsync) before it sends the next, the pattern of apps, devices and webhooks. The load
// (publishers and consumers) runs in a child process of its own, started from this binary
// with -load, so that the server's figures do not include the load generator's Go runtime.

// loadSpec tells the child what to load and where.
type loadSpec struct {
	Kind    string `json:"kind"` // rabbitmq, jetstream, https
	URL     string `json:"url"`
	CA      string `json:"ca,omitempty"` // PEM file of the server's CA (TLS)
	User    string `json:"user,omitempty"`
	Key     string `json:"key,omitempty"` // API key (Penstock)
	Prefix  string `json:"prefix,omitempty"`
	Subject string `json:"subject,omitempty"`
	Stream  string `json:"stream,omitempty"`
	Durable string `json:"durable,omitempty"`
	Queue   string `json:"queue,omitempty"`
	Clients int    `json:"clients"`
	N       int    `json:"n"`
	Size    int    `json:"size"`
	Consume bool   `json:"consume"` // consume while publishing (end to end), or publish only
	// Spread > 1: publisher k writes to the queue (subject, URL) named with suffix k % Spread,
	// one of Spread queues; publish only.
	Spread int `json:"spread,omitempty"`
}

// target is what publisher k writes to: name, or name with its queue's number when spread.
func (s loadSpec) target(name string, k int) string {
	if s.Spread <= 1 {
		return name
	}
	return name + strconv.Itoa(k%s.Spread)
}

// loadResult is what the child prints: when the last publish was acknowledged and the last
// message consumed, and the publish round-trip and end-to-end latencies.
type loadResult struct {
	Published  int           `json:"published"`
	PubElapsed time.Duration `json:"pub_elapsed"`
	Elapsed    time.Duration `json:"elapsed"`
	AckP50     time.Duration `json:"ack_p50"`
	AckP99     time.Duration `json:"ack_p99"`
	E2EP50     time.Duration `json:"e2e_p50"`
	E2EP99     time.Duration `json:"e2e_p99"`
	Error      string        `json:"error,omitempty"`
}

// runLoad starts the child and waits for its result.
func runLoad(name string, spec loadSpec) (result, error) {
	exe, err := os.Executable()
	if err != nil {
		return result{name: name}, err
	}
	b, _ := json.Marshal(spec)
	cmd := exec.Command(exe, "-load", string(b))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return result{name: name}, fmt.Errorf("load generator: %w", err)
	}
	var r loadResult
	if err := json.Unmarshal(bytes.TrimSpace(out), &r); err != nil {
		return result{name: name}, fmt.Errorf("load generator said %q: %w", out, err)
	}
	if r.Error != "" {
		return result{name: name}, errors.New(r.Error)
	}
	return result{name: name, msgs: spec.N, size: spec.Size, elapsed: r.Elapsed, pubElapsed: r.PubElapsed, p50: r.E2EP50, p99: r.E2EP99,
		note: fmt.Sprintf("ack p50 %s p99 %s", r.AckP50.Round(10*time.Microsecond), r.AckP99.Round(10*time.Microsecond))}, nil
}

// loadMain is the child: it runs spec and prints one loadResult.
func loadMain(arg string) {
	var spec loadSpec
	r := loadResult{}
	if err := json.Unmarshal([]byte(arg), &spec); err != nil {
		r.Error = "-load: " + err.Error()
	} else {
		r = load(spec)
	}
	b, _ := json.Marshal(r)
	fmt.Println(string(b))
}

func tlsFor(spec loadSpec) (*tls.Config, error) {
	if spec.CA == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(spec.CA)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	return &tls.Config{RootCAs: roots, ServerName: "localhost", MinVersion: tls.VersionTLS12}, nil
}

// publisher sends one message and returns once it is acknowledged.
type publisher func(body []byte) error

// consumer takes what is there and acknowledges it, handing each body to got; it returns
// when stop is closed.
type consumer func(stop <-chan struct{}, got func(body []byte)) error

func load(spec loadSpec) loadResult {
	tc, err := tlsFor(spec)
	if err != nil {
		return loadResult{Error: err.Error()}
	}
	var pubs []publisher
	var cons []consumer
	var closers []func()
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	switch spec.Kind {
	case "rabbitmq":
		pubs, cons, closers, err = rabbitLoad(spec)
	case "jetstream":
		pubs, cons, closers, err = jetstreamLoad(spec, tc)
	case "https":
		pubs, cons, err = httpsLoad(spec, tc)
	default:
		err = fmt.Errorf("kind %q", spec.Kind)
	}
	if err != nil {
		return loadResult{Error: err.Error()}
	}
	if !spec.Consume {
		cons = nil
	}
	acks, e2e := &latencies{}, &latencies{}
	var got atomic.Int64
	finished := make(chan struct{})
	var once sync.Once
	stop := make(chan struct{})
	errc := make(chan error, len(pubs)+len(cons))
	start := time.Now()
	var cwg sync.WaitGroup
	for _, c := range cons {
		cwg.Go(func() {
			if err := c(stop, func(body []byte) {
				e2e.add(time.Since(sentAt(body)))
				if got.Add(1) >= int64(spec.N) {
					once.Do(func() { close(finished) })
				}
			}); err != nil {
				errc <- fmt.Errorf("consumer: %w", err)
			}
		})
	}
	var next atomic.Int64
	var pwg sync.WaitGroup
	for _, p := range pubs {
		pwg.Go(func() {
			for next.Add(1) <= int64(spec.N) {
				body := payload(spec.Size)
				t := time.Now()
				if err := p(body); err != nil {
					errc <- fmt.Errorf("publisher: %w", err)
					return
				}
				acks.add(time.Since(t))
			}
		})
	}
	pubDone := make(chan struct{})
	go func() { pwg.Wait(); close(pubDone) }()
	var r loadResult
	select {
	case <-pubDone:
		r.PubElapsed = time.Since(start)
	case err := <-errc:
		close(stop)
		return loadResult{Error: err.Error()}
	}
	if len(cons) == 0 {
		once.Do(func() { close(finished) })
	}
	select {
	case <-finished:
		r.Elapsed = time.Since(start)
	case err := <-errc:
		close(stop)
		return loadResult{Error: err.Error()}
	case <-time.After(5 * time.Minute):
		close(stop)
		return loadResult{Error: fmt.Sprintf("consumed %d of %d in 5 minutes after the last publish", got.Load(), spec.N)}
	}
	close(stop)
	cwg.Wait()
	r.Published = spec.N
	r.AckP50, r.AckP99 = acks.pct()
	r.E2EP50, r.E2EP99 = e2e.pct()
	return r
}

// rabbitLoad: each publisher has its own connection and a channel in confirm mode, and waits
// for the confirm of each persistent message; one consumer with manual acks, prefetch 500.
func rabbitLoad(spec loadSpec) ([]publisher, []consumer, []func(), error) {
	var closers []func()
	var pubs []publisher
	for k := range spec.Clients {
		queue := spec.target(spec.Queue, k)
		conn, err := amqp.Dial(spec.URL)
		if err != nil {
			return nil, nil, closers, err
		}
		closers = append(closers, func() { conn.Close() })
		ch, err := conn.Channel()
		if err != nil {
			return nil, nil, closers, err
		}
		if err := ch.Confirm(false); err != nil {
			return nil, nil, closers, err
		}
		pubs = append(pubs, func(body []byte) error {
			dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, false, false,
				amqp.Publishing{DeliveryMode: amqp.Persistent, Body: body})
			if err != nil {
				return err
			}
			if ok, err := dc.WaitContext(ctx); err != nil || !ok {
				return fmt.Errorf("not confirmed: %v", err)
			}
			return nil
		})
	}
	conn, err := amqp.Dial(spec.URL)
	if err != nil {
		return nil, nil, closers, err
	}
	closers = append(closers, func() { conn.Close() })
	con := func(stop <-chan struct{}, got func([]byte)) error {
		cc, err := conn.Channel()
		if err != nil {
			return err
		}
		if err := cc.Qos(500, 0, false); err != nil {
			return err
		}
		deliveries, err := cc.Consume(spec.Queue, "", false, false, false, false, nil)
		if err != nil {
			return err
		}
		for {
			select {
			case <-stop:
				return nil
			case d, ok := <-deliveries:
				if !ok {
					return errors.New("delivery channel closed")
				}
				got(d.Body)
				if err := d.Ack(false); err != nil {
					return err
				}
			}
		}
	}
	return pubs, []consumer{con}, closers, nil
}

// jetstreamLoad: each publisher has its own connection and publishes synchronously (waits for
// the stream's acknowledgement); one consumer fetches up to 500 and acknowledges each.
func jetstreamLoad(spec loadSpec, tc *tls.Config) ([]publisher, []consumer, []func(), error) {
	var closers []func()
	connect := func() (*nats.Conn, jetstream.JetStream, error) {
		opts := []nats.Option{nats.Name("bench")}
		if spec.User != "" {
			opts = append(opts, nats.UserInfo(spec.User, spec.Key))
		}
		if tc != nil {
			opts = append(opts, nats.Secure(tc))
		}
		nc, err := nats.Connect(spec.URL, opts...)
		if err != nil {
			return nil, nil, err
		}
		closers = append(closers, nc.Close)
		var js jetstream.JetStream
		if spec.Prefix != "" {
			js, err = jetstream.NewWithAPIPrefix(nc, spec.Prefix)
		} else {
			js, err = jetstream.New(nc)
		}
		return nc, js, err
	}
	var pubs []publisher
	for k := range spec.Clients {
		_, js, err := connect()
		if err != nil {
			return nil, nil, closers, err
		}
		subject := spec.target(spec.Subject, k)
		pubs = append(pubs, func(body []byte) error {
			_, err := js.Publish(ctx, subject, body)
			return err
		})
	}
	if !spec.Consume {
		return pubs, nil, closers, nil
	}
	_, js, err := connect()
	if err != nil {
		return nil, nil, closers, err
	}
	c, err := js.Consumer(ctx, spec.Stream, spec.Durable)
	if err != nil {
		return nil, nil, closers, err
	}
	con := func(stop <-chan struct{}, got func([]byte)) error {
		for {
			select {
			case <-stop:
				return nil
			default:
			}
			b, err := c.Fetch(500, jetstream.FetchMaxWait(200*time.Millisecond))
			if err != nil {
				return err
			}
			for m := range b.Messages() {
				got(m.Data())
				if err := m.Ack(); err != nil {
					return err
				}
			}
			if err := b.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
				return err
			}
		}
	}
	return pubs, []consumer{con}, closers, nil
}

// postTo POSTs body as JSON with the API key and returns the answer's body (an error for a
// status of 300 or more).
func postTo(client *http.Client, url, key string, body any) ([]byte, error) {
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest("POST", url, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	if resp.StatusCode >= 300 {
		return nil, fmt.Errorf("%s: %d %s", url, resp.StatusCode, buf.String())
	}
	return buf.Bytes(), nil
}

// httpsLoad: each publisher POSTs one message per request on its own keep-alive connection;
// four consumers take up to 500 and acknowledge them in one request.
func httpsLoad(spec loadSpec, tc *tls.Config) ([]publisher, []consumer, error) {
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tc, MaxIdleConnsPerHost: 2 * spec.Clients, MaxConnsPerHost: 2 * spec.Clients}}
	post := func(path string, body any) ([]byte, error) {
		return postTo(client, spec.URL+path, spec.Key, body)
	}
	var pubs []publisher
	for k := range spec.Clients {
		url := spec.target(spec.URL, k) + "/messages"
		pubs = append(pubs, func(body []byte) error {
			_, err := postTo(client, url, spec.Key, map[string]any{"messages": []map[string]string{{"id": nuid.Next(), "data": string(body)}}})
			return err
		})
	}
	var cons []consumer
	for range 4 {
		cons = append(cons, func(stop <-chan struct{}, got func([]byte)) error {
			for {
				select {
				case <-stop:
					return nil
				default:
				}
				body, err := post("/consume", map[string]any{"max": 500, "wait_ms": 200})
				if err != nil {
					return err
				}
				var out struct {
					Messages []struct {
						AckToken string `json:"ack_token"`
						Data     string `json:"data"`
					} `json:"messages"`
				}
				if err := json.Unmarshal(body, &out); err != nil {
					return err
				}
				if len(out.Messages) == 0 {
					continue
				}
				tokens := make([]string, len(out.Messages))
				for i, m := range out.Messages {
					got([]byte(m.Data))
					tokens[i] = m.AckToken
				}
				if _, err := post("/ack", map[string]any{"tokens": tokens}); err != nil {
					return err
				}
			}
		})
	}
	return pubs, cons, nil
}

var (
	closedConsume = flag.Bool("consume", false, "closed-loop runs: consume and acknowledge while publishing (end to end)")
	closedQueues  = flag.Int("queues", 1, "closed-loop runs: spread the publishers over this many queues (streams), publish only")
)

// queueNames are the closed-loop run's queues: name, or name0..name<K-1> with -queues K.
func queueNames(name string) []string {
	if *closedQueues <= 1 {
		return []string{name}
	}
	var out []string
	for k := range *closedQueues {
		out = append(out, name+strconv.Itoa(k))
	}
	return out
}

var loadFlag = flag.String("load", "", "run as the load generator of a closed-loop run (internal: the JSON spec)")

// closedLoop runs the four closed-loop runs (clients publishers, n messages of size bytes)
// and prints them with the ratios.
func closedLoop(n, size, clients int, skipRabbit bool) error {
	what := "publish only"
	if *closedQueues > 1 {
		if *closedConsume {
			return errors.New("-queues above 1 is publish only: leave out -consume")
		}
		what = fmt.Sprintf("publish only, spread over %d queues (streams), publisher k on queue k mod %d", *closedQueues, *closedQueues)
	}
	if *closedConsume {
		what = "one consumer (four over HTTPS) acknowledging while they publish"
	}
	fmt.Printf("closed loop: %d publishers of single %d-byte messages, each waiting for its acknowledgement (after fsync); %d messages per run; %s; load in its own process\n\n",
		clients, size, n, what)
	var rs []result
	add := func(r result, err error) (result, error) {
		if err != nil {
			return r, fmt.Errorf("%s: %w", r.name, err)
		}
		rs = append(rs, r)
		e2e := ""
		if *closedConsume {
			e2e = fmt.Sprintf(" %8.0f msgs/s end to end, e2e p50 %s p99 %s;", r.rate(), r.p50.Round(10*time.Microsecond), r.p99.Round(10*time.Microsecond))
		}
		fmt.Printf("%-56s %8.0f published/s;%s %s\n", r.name, r.pubRate(), e2e, r.note)
		return r, nil
	}
	raw, err := add(closedRaw(n, size, clients))
	if err != nil {
		return err
	}
	native, err := add(closedNative(n, size, clients))
	if err != nil {
		return err
	}
	https, err := add(closedHTTPS(n, size, clients))
	if err != nil {
		return err
	}
	var rabbit result
	if !skipRabbit {
		if rabbit, err = add(closedRabbit(n, size, clients)); err != nil {
			return err
		}
	}
	fmt.Printf("\nratios of published/s (closed loop)\n")
	ratio := func(label string, a, b result, target float64) {
		mark := "meets"
		if a.pubRate()/b.pubRate() < target {
			mark = "BELOW"
		}
		fmt.Printf("  %-62s %6.2f  (target >= %.1f: %s)\n", label, a.pubRate()/b.pubRate(), target, mark)
	}
	ratio("HTTPS / raw JetStream", https, raw, 1.5)
	ratio("native NATS / raw JetStream", native, raw, 0.9)
	if !skipRabbit {
		ratio("HTTPS / RabbitMQ quorum", https, rabbit, 0.6)
		ratio("native NATS / RabbitMQ quorum", native, rabbit, 0.8)
	}
	return nil
}

func closedRaw(n, size, clients int) (result, error) {
	name := "(a) raw JetStream, sync always"
	dir, _ := os.MkdirTemp("", "bench-fabric")
	defer os.RemoveAll(dir)
	ns, err := server.NewServer(&server.Options{JetStream: true, StoreDir: dir, Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true,
		SyncInterval: 2 * time.Minute, SyncAlways: true})
	if err != nil {
		return result{name: name}, err
	}
	ns.Start()
	defer ns.Shutdown()
	if !ns.ReadyForConnections(10 * time.Second) {
		return result{name: name}, errors.New("server not ready")
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		return result{name: name}, err
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	for _, q := range queueNames("q") {
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: strings.ToUpper(q), Subjects: []string{q}, Retention: jetstream.WorkQueuePolicy}); err != nil {
			return result{name: name}, err
		}
		if _, err := js.CreateOrUpdateConsumer(ctx, strings.ToUpper(q), jetstream.ConsumerConfig{Durable: "c", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: -1}); err != nil {
			return result{name: name}, err
		}
	}
	return runLoad(name, loadSpec{Kind: "jetstream", URL: ns.ClientURL(), Subject: "q", Stream: "Q", Durable: "c", Clients: clients, N: n, Size: size,
		Consume: *closedConsume, Spread: *closedQueues})
}

func closedNative(n, size, clients int) (result, error) {
	name := "(b) Penstock native NATS, sync always"
	p, err := openPenstock("always", config.Default().Fabric)
	if err != nil {
		return result{name: name}, err
	}
	defer p.close()
	if err := p.spreadQueues(); err != nil {
		return result{name: name}, err
	}
	p.mark()
	r, err := runLoad(name, loadSpec{Kind: "jetstream", URL: "tls://" + p.stack.Engine.NativeAddrs().NATS, CA: p.cm.CAPath(),
		User: "acme/production", Key: p.key, Prefix: fabric.APIPrefix, Subject: "shop.q.jobs", Stream: "Q_shop_jobs", Durable: "shop",
		Clients: clients, N: n, Size: size, Consume: *closedConsume, Spread: *closedQueues})
	r.note += "; " + p.commits()
	return r, err
}

// spreadQueues creates the queues jobs0.. of a -queues run beside jobs.
func (p *penstockStack) spreadQueues() error {
	if *closedQueues <= 1 {
		return nil
	}
	for _, q := range queueNames("jobs") {
		ref := fabric.Ref{Tenant: "acme", Environment: "production", Application: "shop", Name: q}
		if _, err := p.fab.CreateQueue(ctx, ref, fabric.QueueSpec{MaxDeliveries: 5}); err != nil {
			return err
		}
	}
	return nil
}

func closedHTTPS(n, size, clients int) (result, error) {
	name := "(c) Penstock HTTPS, one message per request, durable"
	p, err := openPenstock("always", commitConfig())
	if err != nil {
		return result{name: name}, err
	}
	defer p.close()
	if err := p.spreadQueues(); err != nil {
		return result{name: name}, err
	}
	base, stop, err := p.serveAPI()
	if err != nil {
		return result{name: name}, err
	}
	defer stop()
	p.mark()
	r, err := runLoad(name, loadSpec{Kind: "https", URL: base, CA: p.cm.CAPath(), Key: p.key, Clients: clients, N: n, Size: size,
		Consume: *closedConsume, Spread: *closedQueues})
	r.note += "; " + p.commits()
	return r, err
}

func closedRabbit(n, size, clients int) (result, error) {
	name := "(d) RabbitMQ quorum queue, confirm per message"
	const url = "amqp://guest:guest@127.0.0.1:5672/"
	conn, err := amqp.Dial(url)
	if err != nil {
		return result{name: name}, fmt.Errorf("%w (start it with: rabbitmq-server -detached, or run with -skip-rabbitmq)", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return result{name: name}, err
	}
	qname := "penstock-bench-" + nuid.Next()
	for _, q := range queueNames(qname) {
		if _, err := ch.QueueDeclare(q, true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
			return result{name: name}, err
		}
		defer func() { _, _ = ch.QueueDelete(q, false, false, false) }()
	}
	return runLoad(name, loadSpec{Kind: "rabbitmq", URL: url, Queue: qname, Clients: clients, N: n, Size: size,
		Consume: *closedConsume, Spread: *closedQueues})
}
