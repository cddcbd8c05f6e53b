package fabric

import (
	"crypto/tls"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/config"
)

// natsClient connects over the native NATS (or, with ws, WebSocket) listener as a tenant
// client would, collecting the asynchronous errors (permission violations) the server sends.
type natsClient struct {
	nc   *nats.Conn
	mu   sync.Mutex
	errs []string
}

func (c *natsClient) errors() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.errs, "; ")
}

func (h *harness) dialNATS(user, key, keyID string, ws bool) (*natsClient, error) {
	c := &natsClient{}
	url := "tls://" + h.native.NATS
	if ws {
		url = "wss://" + h.native.WebSocket
	}
	nc, err := nats.Connect(url,
		nats.UserInfo(user, key),
		nats.Secure(&tls.Config{RootCAs: h.roots, ServerName: "localhost", MinVersion: tls.VersionTLS12}),
		nats.MaxReconnects(0),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			c.mu.Lock()
			c.errs = append(c.errs, err.Error())
			c.mu.Unlock()
		}))
	if err != nil {
		return nil, err
	}
	c.nc = nc
	h.t.Cleanup(nc.Close)
	return c, nil
}

func (h *harness) dialMQTT(user, key, clientID string) (mqtt.Client, error) {
	o := mqtt.NewClientOptions().AddBroker("tls://" + h.native.MQTT).SetClientID(clientID).
		SetUsername(user).SetPassword(key).SetTLSConfig(&tls.Config{RootCAs: h.roots, ServerName: "localhost", MinVersion: tls.VersionTLS12}).
		SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).SetCleanSession(true)
	c := mqtt.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, errors.New("mqtt connect timed out")
	}
	if tok.Error() != nil {
		return nil, tok.Error()
	}
	h.t.Cleanup(func() { c.Disconnect(100) })
	return c, nil
}

// A message published over one protocol is consumed unchanged over the others: HTTPS (the
// service API) -> NATS, NATS -> HTTPS, MQTT -> HTTPS, WebSocket -> NATS consume with ack.
func TestNativeProtocolsSeeTheSameMessages(t *testing.T) {
	h := open(t, nil)
	q := h.queue("acme", "jobs", QueueSpec{})
	key, keyID := h.key("acme", authz.Developer)

	// HTTPS path -> native NATS consumer, acknowledged natively: the queue empties.
	publish(t, h.fab, q, Message{ID: "m1", Data: []byte("from https"), Headers: map[string]string{"Trace": "abc"}})
	c, err := h.dialNATS("acme/production", key, keyID, false)
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.NewWithAPIPrefix(c.nc, APIPrefix)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := js.Consumer(ctx, q.queueStream(), q.consumer())
	if err != nil {
		t.Fatalf("consumer over NATS: %v (%s)", err, c.errors())
	}
	b, err := cons.Fetch(1, jetstream.FetchMaxWait(3*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var got []jetstream.Msg
	for m := range b.Messages() {
		got = append(got, m)
	}
	if len(got) != 1 || string(got[0].Data()) != "from https" || got[0].Headers().Get("Trace") != "abc" || got[0].Headers().Get(jetstream.MsgIDHeader) != "m1" {
		t.Fatalf("over NATS: %d messages %v (%s)", len(got), got, c.errors())
	}
	if err := got[0].DoubleAck(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _ := h.fab.Queue(ctx, q); st.Stats.Depth != 0 {
		t.Fatalf("depth %d after a native ack", st.Stats.Depth)
	}

	// NATS JetStream publish (acknowledged by the engine) -> HTTPS consume.
	if _, err := js.Publish(ctx, q.queueSubject(), []byte("from nats"), jetstream.WithMsgID("n1")); err != nil {
		t.Fatalf("publish over NATS: %v", err)
	}
	// MQTT QoS 1 -> HTTPS consume: topic orders/q/jobs is subject orders.q.jobs.
	mc, err := h.dialMQTT("acme/production", key, "device-1")
	if err != nil {
		t.Fatal(err)
	}
	if tok := mc.Publish("orders/q/jobs", 1, false, []byte("from mqtt")); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("mqtt publish: %v", tok.Error())
	}
	// WebSocket (NATS over wss) publish.
	wc, err := h.dialNATS("acme/production", key, keyID, true)
	if err != nil {
		t.Fatal(err)
	}
	wjs, _ := jetstream.New(wc.nc)
	if _, err := wjs.Publish(ctx, q.queueSubject(), []byte("from websocket")); err != nil {
		t.Fatalf("publish over websocket: %v", err)
	}
	want := map[string]bool{"from nats": true, "from mqtt": true, "from websocket": true}
	waitFor(t, "the three messages over HTTPS", func() bool {
		ds, err := h.fab.Consume(ctx, q, 10, 100*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			if !want[string(d.Data)] {
				t.Fatalf("unexpected %q", d.Data)
			}
			delete(want, string(d.Data))
			_ = h.fab.Settle(ctx, q, []string{d.AckToken}, Ack, 0)
		}
		return len(want) == 0
	})

	// MQTT subscribers see queue traffic live under feed/ (copies; the queue still holds it).
	seen := make(chan string, 4)
	if tok := mc.Subscribe("feed/orders/q/jobs", 1, func(_ mqtt.Client, m mqtt.Message) { seen <- string(m.Payload()) }); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("mqtt subscribe: %v", tok.Error())
	}
	publish(t, h.fab, q, Message{Data: []byte("live")})
	select {
	case s := <-seen:
		if s != "live" {
			t.Fatalf("mqtt saw %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("mqtt subscriber saw nothing")
	}
}

// Tenant A's clients, on every protocol, reach nothing of tenant B: not its environment, not
// its subjects, not the JetStream API beyond their own application's consumers.
func TestNativeIsolationBetweenTenants(t *testing.T) {
	h := open(t, nil)
	qa := h.queue("acme", "jobs", QueueSpec{})
	qb := h.queue("globex", "jobs", QueueSpec{})
	keyA, idA := h.key("acme", authz.Developer)
	keyB, idB := h.key("globex", authz.Developer)

	// A's key does not open B's environment on any protocol.
	if _, err := h.dialNATS("globex/production", keyA, idA, false); err == nil {
		t.Fatal("acme key opened globex over NATS")
	}
	if _, err := h.dialNATS("globex/production", keyA, idA, true); err == nil {
		t.Fatal("acme key opened globex over WebSocket")
	}
	if _, err := h.dialMQTT("globex/production", keyA, "a-into-b"); err == nil {
		t.Fatal("acme key opened globex over MQTT")
	}
	if _, err := h.dialNATS("acme/production", "psk_0000000000000000_"+strings.Repeat("0", 64), idA, false); err == nil {
		t.Fatal("a made-up key was accepted")
	}
	// A user that is not two valid names is refused before the key is looked at.
	for _, user := range []string{">/production", "acme/*", "acme", "acme/production/x", "ACME/production", "a.b/production"} {
		if _, err := h.dialNATS(user, keyA, idA, false); err == nil {
			t.Fatalf("native user %q accepted", user)
		}
	}

	// B listens on everything it may; A then tries everything it can think of.
	b, err := h.dialNATS("globex/production", keyB, idB, false)
	if err != nil {
		t.Fatal(err)
	}
	heardB := make(chan string, 100) // subject and payload of what B hears
	for _, s := range []string{"feed.orders.q.*"} {
		if _, err := b.nc.Subscribe(s, func(m *nats.Msg) { heardB <- m.Subject + " " + string(m.Data) }); err != nil {
			t.Fatal(err)
		}
	}
	_ = b.nc.Flush()

	for _, ws := range []bool{false, true} {
		a, err := h.dialNATS("acme/production", keyA, idA, ws)
		if err != nil {
			t.Fatal(err)
		}
		// Outside its grant, A's subscriptions are refused by the server.
		for _, s := range []string{">", "$JS.API.>", "$SYS.>", "orders.dlq.jobs", "orders.q.*", "$KV.>", "$JS.EVENT.>"} {
			if _, err := a.nc.SubscribeSync(s); err != nil {
				t.Fatal(err)
			}
		}
		// Publishing to the JetStream API beyond its consumers: refused.
		for _, s := range []string{"$JS.API.STREAM.INFO." + qb.queueStream(), "$JS.API.STREAM.LIST", "$JS.API.STREAM.PURGE." + qa.queueStream(),
			"$JS.API.CONSUMER.CREATE." + qa.queueStream(), "$JS.API.STREAM.MSG.GET." + qa.queueStream(), "$JS.API.INFO",
			APIPrefix + ".STREAM.INFO." + qa.queueStream(), APIPrefix + ".CONSUMER.MSG.NEXT." + qa.queueStream() + ".other"} {
			if _, err := a.nc.Request(s, nil, 300*time.Millisecond); err == nil {
				t.Fatalf("%s answered", s)
			}
		}
		// Publishing on B's subject names lands in A's own account.
		if err := a.nc.Publish("orders.q.jobs", []byte("a-core")); err != nil {
			t.Fatal(err)
		}
		_ = a.nc.Flush()
		waitFor(t, "permission violations to be reported", func() bool { return strings.Contains(a.errors(), "Permissions Violation") })
		a.nc.Close()
	}
	// MQTT: A subscribes to everything and publishes on the shared names.
	ma, err := h.dialMQTT("acme/production", keyA, "a-device")
	if err != nil {
		t.Fatal(err)
	}
	// Paho hands a message to every local handler whose filter matches, refused or not: this
	// one also sees what A's own feed subscription below receives.
	heardA := make(chan string, 100)
	tok := ma.Subscribe("#", 0, func(_ mqtt.Client, m mqtt.Message) { heardA <- m.Topic() + " " + string(m.Payload()) })
	tok.WaitTimeout(5 * time.Second)
	if tok.Error() == nil {
		if st, ok := tok.(*mqtt.SubscribeToken); ok && st.Result()["#"] != 0x80 {
			t.Fatalf("mqtt '#' subscription granted: %v", st.Result())
		}
	}
	ma.Publish("orders/q/jobs", 1, false, []byte("a-mqtt")).WaitTimeout(5 * time.Second)
	// A's own feed: the barrier for what A must not hear.
	ownA := make(chan string, 100)
	if tok := ma.Subscribe("feed/orders/q/jobs", 0, func(_ mqtt.Client, m mqtt.Message) { ownA <- string(m.Payload()) }); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("acme's subscription to its own feed: %v", tok.Error())
	}

	// B publishes; A hears none of it. B's message is fed out while it is published, before
	// the marker that follows it into A's queue, so once A has the marker it would have B's.
	publish(t, h.fab, qb, Message{Data: []byte("b-secret")})
	publish(t, h.fab, qa, Message{Data: []byte("a-marker")})
	for deadline := time.After(10 * time.Second); ; {
		select {
		case m := <-ownA:
			if m != "a-marker" {
				continue
			}
		case <-deadline:
			t.Fatal("acme's marker never reached acme's feed")
		}
		break
	}
	for len(heardA) > 0 {
		// A's own MQTT message may reach A's feed after A subscribed to it: native queue
		// publishes are committed by the fabric after the MQTT acknowledgement.
		if s := <-heardA; s != "feed/orders/q/jobs a-marker" && s != "feed/orders/q/jobs a-mqtt" {
			t.Fatalf("acme heard %s", s)
		}
	}
	// B's queue holds only its own message; A's holds A's (two over NATS and WebSocket, one
	// over MQTT, and the marker).
	if st, _ := h.fab.Queue(ctx, qb); st.Stats.Depth != 1 {
		t.Fatalf("globex queue depth %d, want 1", st.Stats.Depth)
	}
	waitFor(t, "acme's own messages in acme's queue", func() bool {
		st, _ := h.fab.Queue(ctx, qa)
		return st.Stats.Depth == 4
	})
	// B hears its own message; everything A tried was sent before it, so anything of A's that
	// reached B would be heard first.
	select {
	case s := <-heardB:
		if s != "feed.orders.q.jobs b-secret" {
			t.Fatalf("globex heard %s", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("globex never heard its own message")
	}
}

// A revoked key is refused on the next connect and its open connections are closed.
func TestNativeRevocationClosesConnections(t *testing.T) {
	h := open(t, nil)
	h.queue("acme", "jobs", QueueSpec{})
	key, id := h.key("acme", authz.Operator)
	c, err := h.dialNATS("acme/production", key, id, false)
	if err != nil {
		t.Fatal(err)
	}
	w, err := h.dialNATS("acme/production", key, id, true)
	if err != nil {
		t.Fatal(err)
	}
	m, err := h.dialMQTT("acme/production", key, "revoked-device")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.id.RevokeAPIKey(ctx, id); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitFor(t, "every connection to close", func() bool {
		return c.nc.IsClosed() && w.nc.IsClosed() && !m.IsConnectionOpen()
	})
	t.Logf("closed %s after revocation", time.Since(start).Round(time.Millisecond))
	if _, err := h.dialNATS("acme/production", key, id, false); err == nil {
		t.Fatal("revoked key reconnected")
	}
	if _, err := h.dialMQTT("acme/production", key, "again"); err == nil {
		t.Fatal("revoked key reconnected over MQTT")
	}
}

// Engine-enforced limits (connections, payload) and the publish-rate quota give an error on
// each protocol and a metric and audit entry.
func TestNativeQuotas(t *testing.T) {
	h := open(t, func(f *config.Fabric) {
		f.MaxConnections = 2
		f.MaxPayload = 1024
		f.PublishRate = 20
	})
	q := h.queue("acme", "jobs", QueueSpec{})
	key, id := h.key("acme", authz.Developer)

	// Payload: HTTPS refuses, NATS refuses at the server.
	if _, err := h.fab.Publish(ctx, Target{Ref: q}, []Message{{Data: make([]byte, 2048)}}); !errors.Is(err, ErrPayloadLimit) {
		t.Fatalf("https payload: %v", err)
	}
	big, err := h.dialNATS("acme/production", key, id, false)
	if err != nil {
		t.Fatal(err)
	}
	// The server announces the account's limit after the login: a client that has it refuses
	// the message itself; otherwise the server closes the connection with the violation.
	perr := big.nc.Publish(q.queueSubject(), make([]byte, 2048))
	if perr == nil {
		_ = big.nc.Flush()
		waitFor(t, "the oversized publish to be refused", big.nc.IsClosed)
		perr = big.nc.LastError()
	}
	if perr == nil || !strings.Contains(strings.ToLower(perr.Error()), "maximum payload") {
		t.Fatalf("nats payload: %v", perr)
	}
	big.nc.Close()
	// The closed connection leaves the count at the next sweep.
	waitFor(t, "the closed connection to leave the count", func() bool { return h.fab.openConns("acme", "production") == 0 })
	c1, err := h.dialNATS("acme/production", key, id, false)
	if err != nil {
		t.Fatal(err)
	}
	// Connections: the third is refused, on any protocol.
	if _, err := h.dialNATS("acme/production", key, id, true); err != nil {
		t.Fatal(err)
	}
	// The limit is the tenant-environment's (each key has its own client account), so
	// Penstock refuses it before the engine; the client sees an authorization error, the
	// metric and the audit log say why.
	if _, err := h.dialNATS("acme/production", key, id, false); err == nil || !strings.Contains(err.Error(), "Authorization") {
		t.Fatalf("third connection: %v", err)
	}
	if _, err := h.dialMQTT("acme/production", key, "third"); err == nil {
		t.Fatal("third connection over MQTT accepted")
	}
	if n := testutil.ToFloat64(h.fab.m.quotaExceeded.WithLabelValues("max_connections", "native")); n != 2 {
		t.Fatalf("max_connections refusals counted: %v", n)
	}
	// Publish rate over HTTPS: 429-style error once the bucket is spent, with an audit event.
	var rateErr error
	for range 100 {
		if _, rateErr = h.fab.Publish(ctx, Target{Ref: q}, []Message{{Data: []byte("x")}}); rateErr != nil {
			break
		}
	}
	if !errors.Is(rateErr, ErrRateLimited) {
		t.Fatalf("https rate: %v", rateErr)
	}
	waitForEvent(t, h, "fabric.quota", "https")
	// Publish rate natively: the connections that publish over it are closed.
	for i := range 200 {
		if c1.nc.Publish(q.queueSubject(), []byte("flood")) != nil {
			break
		}
		if i%50 == 0 {
			_ = c1.nc.Flush()
		}
	}
	waitFor(t, "the flooding connection to be closed", c1.nc.IsClosed)
	waitForEvent(t, h, "fabric.quota", "native")
}

func waitForEvent(t *testing.T, h *harness, action, path string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case e := <-h.audit.ch:
			if e.Action == action && e.Details["path"] == path {
				if e.Tenant != "acme" || e.Result != "denied" {
					t.Fatalf("event %+v", e)
				}
				return
			}
		case <-deadline:
			t.Fatalf("no %s event for %s", action, path)
		}
	}
}

// The storage quota is the engine's account limit: once a tenant-environment's queues hold it,
// publishes are refused with a clear error, on HTTPS and natively.
func TestStorageQuota(t *testing.T) {
	h := open(t, func(f *config.Fabric) { f.MaxStorage = 256 << 10 })
	q1 := h.queue("acme", "one", QueueSpec{})
	q2 := h.queue("acme", "two", QueueSpec{})
	chunk := make([]byte, 16<<10)
	var err error
	for i := 0; i < 64 && err == nil; i++ {
		q := q1
		if i%2 == 1 {
			q = q2
		}
		_, err = h.fab.Publish(ctx, Target{Ref: q}, []Message{{Data: chunk}})
	}
	if !errors.Is(err, ErrStorageQuota) {
		t.Fatalf("over the storage quota: %v", err)
	}
	key, id := h.key("acme", authz.Developer)
	c, derr := h.dialNATS("acme/production", key, id, false)
	if derr != nil {
		t.Fatal(derr)
	}
	js, _ := jetstream.New(c.nc)
	if _, perr := js.Publish(ctx, q1.queueSubject(), chunk); perr == nil {
		t.Fatal("native publish over the storage quota was stored")
	} else {
		t.Logf("https: %v; native: %v", err, perr)
	}
}

// NATS does not check the reply subject a client sets, and the engine answers to it from
// inside the account that receives the request. A client of one application aims those
// answers at another application's queue and at the JetStream API: they arrive in the
// client's own account, never in the tenant's.
func TestNativeReplySubjectsCannotReachOtherApplications(t *testing.T) {
	h := open(t, nil)
	if _, err := h.id.CreateApp(ctx, "acme", "production", "billing"); err != nil {
		t.Fatal(err)
	}
	mine := h.queue("acme", "jobs", QueueSpec{})
	theirs := Ref{Tenant: "acme", Environment: "production", Application: "billing", Name: "invoices"}
	if _, err := h.fab.CreateQueue(ctx, theirs, QueueSpec{}); err != nil {
		t.Fatal(err)
	}
	publish(t, h.fab, theirs, Message{Data: []byte("invoice-1")})
	x := mine
	x.Name = "events"
	if _, err := h.fab.CreateExchange(ctx, x, Fanout); err != nil {
		t.Fatal(err)
	}
	key, id := h.key("acme", authz.Developer) // publish and consume on orders only
	c, err := h.dialNATS("acme/production", key, id, false)
	if err != nil {
		t.Fatal(err)
	}
	targets := []string{
		theirs.queueSubject(),
		"$JS.API.STREAM.DELETE." + theirs.queueStream(),
		"$JS.API.STREAM.PURGE." + theirs.queueStream(),
		"$JS.API.STREAM.DELETE." + mine.deadStream(),
		"$KV.penstock_fabric." + exchangeKey("orders", "events"),
		"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + theirs.queueStream() + ".billing",
		"$JS.ACK." + theirs.queueStream() + ".billing.1.1.1.1.0",
	}
	for _, reply := range targets {
		// A publish acknowledged to reply, and a pull request answered to reply.
		m := nats.NewMsg(mine.queueSubject())
		m.Data = []byte("x")
		m.Reply = reply
		if err := c.nc.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
		next := nats.NewMsg(APIPrefix + ".CONSUMER.MSG.NEXT." + mine.queueStream() + ".orders")
		next.Data = []byte(`{"batch":1,"no_wait":true}`)
		next.Reply = reply
		if err := c.nc.PublishMsg(next); err != nil {
			t.Fatal(err)
		}
	}
	// A barrier instead of a wait: a publish and a pull request of the same connection with
	// real replies. The engine handles one connection's messages in order, so once both are
	// answered, every attempt above has been handled and answered wherever it was aimed.
	njs, err := jetstream.NewWithAPIPrefix(c.nc, APIPrefix)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := njs.Publish(ctx, mine.queueSubject(), []byte("barrier")); err != nil {
		t.Fatalf("barrier publish: %v (%s)", err, c.errors())
	}
	cons, err := njs.Consumer(ctx, mine.queueStream(), mine.consumer())
	if err != nil {
		t.Fatal(err)
	}
	b, err := cons.FetchNoWait(1)
	if err != nil {
		t.Fatalf("barrier fetch: %v", err)
	}
	for range b.Messages() { // ends when the engine has answered the pull request
	}
	if err := b.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
		t.Fatalf("barrier fetch: %v", err)
	}
	st, err := h.fab.Queue(ctx, theirs)
	if err != nil {
		t.Fatalf("billing's queue after the attempts: %v", err)
	}
	if st.Stats.Depth != 1 || st.Stats.Published != 1 {
		t.Fatalf("billing's queue changed: %+v", st.Stats)
	}
	if dl, _, err := h.fab.DeadLetters(ctx, theirs, 0, 10); err != nil || len(dl) != 0 {
		t.Fatalf("billing dead letters: %v %v", dl, err)
	}
	if _, _, err := h.fab.DeadLetters(ctx, mine, 0, 10); err != nil {
		t.Fatalf("orders' dead-letter queue: %v", err)
	}
	ex, err := h.fab.GetExchange(ctx, x)
	if err != nil || ex.Type != Fanout {
		t.Fatalf("exchange record: %+v %v", ex, err)
	}
}

// A tenant-environment deleted and created again in the same process still admits native
// clients: its exports survive, because its limits are applied once.
func TestNativeAfterEnvironmentRecreated(t *testing.T) {
	h := open(t, nil)
	q := h.queue("acme", "jobs", QueueSpec{})
	key, id := h.key("acme", authz.Developer)
	send := func() error {
		c, err := h.dialNATS("acme/production", key, id, false)
		if err != nil {
			return err
		}
		defer c.nc.Close()
		js, _ := jetstream.NewWithAPIPrefix(c.nc, APIPrefix)
		_, err = js.Publish(ctx, q.queueSubject(), []byte("x"))
		return err
	}
	if err := send(); err != nil {
		t.Fatal(err)
	}
	if err := h.fab.DeleteEnvironment(ctx, "acme", "production"); err != nil {
		t.Fatal(err)
	}
	q = h.queue("acme", "jobs", QueueSpec{})
	if err := send(); err != nil {
		t.Fatalf("after the environment was re-created: %v", err)
	}
	if st, _ := h.fab.Queue(ctx, q); st.Stats.Depth != 1 {
		t.Fatalf("depth %d", st.Stats.Depth)
	}
}

// A tenant-environment's account stores on disk only: its limits (set through the account's
// JetStream limits) refuse a memory stream, as the claims they replaced did.
func TestTenantAccountsRefuseMemoryStreams(t *testing.T) {
	h := open(t, nil)
	h.queue("acme", "jobs", QueueSpec{})
	acc, err := h.stack.Engine.Account(ctx, AccountName("acme", "production"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = acc.JetStream().CreateStream(ctx, jetstream.StreamConfig{Name: "MEM", Subjects: []string{"mem.>"}, Storage: jetstream.MemoryStorage})
	if err == nil {
		t.Fatal("a memory stream was created in a tenant-environment's account")
	}
	t.Logf("refused: %v", err)
}
