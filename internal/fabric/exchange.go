package fabric

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/internal/engine"
)

// ExchangeType is how an exchange routes.
type ExchangeType string

// The exchange types, as in AMQP.
const (
	Direct ExchangeType = "direct" // to queues whose binding key equals the routing key
	Fanout ExchangeType = "fanout" // to every bound queue
	Topic  ExchangeType = "topic"  // by pattern: '*' is one word, '#' zero or more
)

// QueueBinding sends an exchange's matching messages to a queue of the same application.
type QueueBinding struct {
	Queue string `json:"queue"`
	Key   string `json:"key,omitempty" doc:"binding key: equal routing key (direct), pattern (topic), unused (fanout)"`
}

// Exchange is an exchange and its bindings.
type Exchange struct {
	Name     string         `json:"name"`
	Type     ExchangeType   `json:"type"`
	Bindings []QueueBinding `json:"bindings"`
	Revision uint64         `json:"-"`
}

// checkRoutingKey allows "" or dot-separated words of printable ASCII, without wildcards.
func checkRoutingKey(k string) error {
	if k == "" {
		return nil
	}
	if len(k) > 255 {
		return invalidf("routing_key: at most 255 characters")
	}
	for w := range strings.SplitSeq(k, ".") {
		if w == "" || w == "*" || w == ">" || w == "#" {
			return invalidf("routing_key %q: dot-separated non-empty words without wildcards", k)
		}
		for i := 0; i < len(w); i++ {
			if w[i] <= ' ' || w[i] >= 0x7f || w[i] == '*' || w[i] == '>' {
				return invalidf("routing_key %q: printable ASCII without spaces, '*' or '>'", k)
			}
		}
	}
	return nil
}

func checkBindingKey(t ExchangeType, k string) error {
	switch t {
	case Fanout:
		if k != "" {
			return invalidf("key: a fanout exchange routes to every bound queue; leave the key empty")
		}
		return nil
	case Direct:
		return checkRoutingKey(k)
	}
	if k == "" || len(k) > 255 {
		return invalidf("key: a topic pattern of 1-255 characters")
	}
	for w := range strings.SplitSeq(k, ".") {
		if w == "*" || w == "#" {
			continue
		}
		if err := checkRoutingKey(w); err != nil {
			return invalidf("key %q: words, '*' (one word) or '#' (zero or more)", k)
		}
	}
	return nil
}

// topicMatch reports whether an AMQP topic pattern matches a routing key.
func topicMatch(pattern, key []string) bool {
	if len(pattern) == 0 {
		return len(key) == 0
	}
	switch pattern[0] {
	case "#":
		for i := 0; i <= len(key); i++ {
			if topicMatch(pattern[1:], key[i:]) {
				return true
			}
		}
		return false
	case "*":
		return len(key) > 0 && topicMatch(pattern[1:], key[1:])
	}
	return len(key) > 0 && pattern[0] == key[0] && topicMatch(pattern[1:], key[1:])
}

// Route returns the queues an exchange sends a message with this routing key to.
func (x Exchange) Route(key string) []string {
	var out []string
	var words []string
	if x.Type == Topic {
		if key != "" {
			words = strings.Split(key, ".")
		}
	}
	for _, b := range x.Bindings {
		ok := false
		switch x.Type {
		case Fanout:
			ok = true
		case Direct:
			ok = b.Key == key
		case Topic:
			var pat []string
			if b.Key != "" {
				pat = strings.Split(b.Key, ".")
			}
			ok = topicMatch(pat, words)
		}
		if ok && !slices.Contains(out, b.Queue) {
			out = append(out, b.Queue)
		}
	}
	return out
}

func exchangeKey(app, name string) string { return "x." + app + "." + name }

// CreateExchange creates an exchange of the given type with no bindings.
func (s *Service) CreateExchange(ctx context.Context, r Ref, t ExchangeType) (Exchange, error) {
	if err := r.check("exchange"); err != nil {
		return Exchange{}, err
	}
	if t != Direct && t != Fanout && t != Topic {
		return Exchange{}, invalidf("type: direct, fanout or topic")
	}
	done, err := s.creating(r)
	if err != nil {
		return Exchange{}, err
	}
	defer done()
	ta, err := s.account(ctx, r.Tenant, r.Environment)
	if err != nil {
		return Exchange{}, err
	}
	kv, err := s.bindingsOf(ctx, ta, true)
	if err != nil {
		return Exchange{}, err
	}
	x := Exchange{Name: r.Name, Type: t, Bindings: []QueueBinding{}}
	b, _ := json.Marshal(x)
	rev, err := kv.Create(ctx, exchangeKey(r.Application, r.Name), b)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return Exchange{}, fmt.Errorf("exchange %s: %w", r.Name, ErrExists)
	}
	if err != nil {
		return Exchange{}, fmt.Errorf("create exchange: %w", err)
	}
	x.Revision = rev
	js := ta.acc.JetStream()
	_, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:               r.exchangeStream(),
		Description:        string(t) + " exchange " + r.Name,
		Subjects:           []string{r.exchangeSubject(), r.exchangeSubject() + ".>"},
		Retention:          jetstream.WorkQueuePolicy,
		Discard:            jetstream.DiscardNew,
		MaxAge:             s.cfg.MaxAge,
		Storage:            jetstream.FileStorage,
		Duplicates:         s.cfg.DuplicateWindow,
		AllowAtomicPublish: true,
		Metadata:           map[string]string{"penstock.kind": "exchange", "penstock.type": string(t)},
	})
	if err == nil {
		_, err = js.CreateOrUpdateConsumer(ctx, r.exchangeStream(), jetstream.ConsumerConfig{
			Durable: routerConsumer, AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second,
			MaxDeliver: -1, MaxAckPending: 1000, Description: "penstock's router",
		})
	}
	if err != nil {
		_ = kv.Delete(ctx, exchangeKey(r.Application, r.Name))
		_ = js.DeleteStream(ctx, r.exchangeStream())
		return Exchange{}, jsErr(err, "create exchange")
	}
	ta.mu.Lock()
	ta.exchanges[r.Application+"/"+r.Name] = x
	ta.mu.Unlock()
	ta.forgetMissing(r.exchangeStream())
	if err := s.startRouter(ta, r); err != nil {
		return Exchange{}, err
	}
	return x, nil
}

// GetExchange returns an exchange with its bindings.
func (s *Service) GetExchange(ctx context.Context, r Ref) (Exchange, error) {
	if err := r.check("exchange"); err != nil {
		return Exchange{}, err
	}
	ta, err := s.account(ctx, r.Tenant, r.Environment)
	if err != nil {
		return Exchange{}, err
	}
	return s.readExchange(ctx, ta, r)
}

func (s *Service) readExchange(ctx context.Context, ta *tenantAccount, r Ref) (Exchange, error) {
	kv, err := s.bindingsOf(ctx, ta, false)
	if err != nil {
		return Exchange{}, err
	}
	if kv == nil {
		return Exchange{}, fmt.Errorf("exchange %s: %w", r.Name, ErrNotFound)
	}
	e, err := kv.Get(ctx, exchangeKey(r.Application, r.Name))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Exchange{}, fmt.Errorf("exchange %s: %w", r.Name, ErrNotFound)
	}
	if err != nil {
		return Exchange{}, fmt.Errorf("read exchange: %w", err)
	}
	var x Exchange
	if err := json.Unmarshal(e.Value(), &x); err != nil {
		return Exchange{}, fmt.Errorf("read exchange %s: %w", r.Name, err)
	}
	x.Revision = e.Revision()
	return x, nil
}

// Exchanges lists an application's exchanges.
func (s *Service) Exchanges(ctx context.Context, app Ref) ([]Exchange, error) {
	if err := app.check(""); err != nil {
		return nil, err
	}
	ta, err := s.account(ctx, app.Tenant, app.Environment)
	if err != nil {
		return nil, err
	}
	var out []Exchange
	for _, n := range streamsOf(ctx, ta, "X", app.Application) {
		app.Name = n
		x, err := s.readExchange(ctx, ta, app)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, x)
	}
	return out, nil
}

// Bind adds a binding (idempotent). The queue must be in the exchange's application.
func (s *Service) Bind(ctx context.Context, r Ref, b QueueBinding) (Exchange, error) {
	return s.updateBindings(ctx, r, b, true, func(x *Exchange) {
		if !slices.Contains(x.Bindings, b) {
			x.Bindings = append(x.Bindings, b)
		}
	})
}

// Unbind removes a binding; removing one that does not exist is ErrNotFound.
func (s *Service) Unbind(ctx context.Context, r Ref, b QueueBinding) (Exchange, error) {
	found := false
	x, err := s.updateBindings(ctx, r, b, false, func(x *Exchange) {
		if i := slices.Index(x.Bindings, b); i >= 0 {
			x.Bindings = slices.Delete(x.Bindings, i, i+1)
			found = true
		}
	})
	if err == nil && !found {
		return x, &Missing{Kind: "binding"}
	}
	return x, err
}

func (s *Service) updateBindings(ctx context.Context, r Ref, b QueueBinding, adding bool, change func(*Exchange)) (Exchange, error) {
	if err := r.check("exchange"); err != nil {
		return Exchange{}, err
	}
	q := r
	q.Name = b.Queue
	if err := q.check("queue"); err != nil {
		return Exchange{}, err
	}
	ta, err := s.account(ctx, r.Tenant, r.Environment)
	if err != nil {
		return Exchange{}, err
	}
	for range 10 {
		x, err := s.readExchange(ctx, ta, r)
		if err != nil {
			return Exchange{}, err
		}
		if adding {
			if err := checkBindingKey(x.Type, b.Key); err != nil {
				return Exchange{}, err
			}
			if _, err := ta.acc.JetStream().Stream(ctx, q.queueStream()); err != nil {
				return Exchange{}, missing(jsErr(err, "queue "+b.Queue), "queue")
			}
		}
		change(&x)
		raw, _ := json.Marshal(x)
		kv, err := s.bindingsOf(ctx, ta, false) // readExchange found it: not nil
		if err != nil {
			return Exchange{}, err
		}
		rev, err := kv.Update(ctx, exchangeKey(r.Application, r.Name), raw, x.Revision)
		if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) || engine.WrongLastSequence(err) {
			continue // changed meanwhile (on a replicated bucket, reported as a mismatch): read again
		}
		if err != nil {
			return Exchange{}, fmt.Errorf("update bindings: %w", err)
		}
		x.Revision = rev
		ta.mu.Lock()
		ta.exchanges[r.Application+"/"+r.Name] = x
		ta.mu.Unlock()
		return x, nil
	}
	return Exchange{}, errors.New("update bindings: too many concurrent changes, try again")
}

// unbindQueue removes a deleted queue from every exchange of its application.
func (s *Service) unbindQueue(ctx context.Context, ta *tenantAccount, q Ref) error {
	for _, n := range streamsOf(ctx, ta, "X", q.Application) {
		r := q
		r.Name = n
		x, err := s.readExchange(ctx, ta, r)
		if err != nil {
			continue
		}
		for _, b := range x.Bindings {
			if b.Queue == q.Name {
				if _, err := s.Unbind(ctx, r, b); err != nil && !errors.Is(err, ErrNotFound) {
					return err
				}
			}
		}
	}
	return nil
}

// DeleteExchange deletes an exchange, its bindings and any messages not yet routed.
func (s *Service) DeleteExchange(ctx context.Context, r Ref) error {
	if err := r.check("exchange"); err != nil {
		return err
	}
	ta, err := s.account(ctx, r.Tenant, r.Environment)
	if err != nil {
		return err
	}
	// The exchanges first: taking them up (an exchange another node made) starts routers,
	// which must not start again for this one once its stream is gone.
	kv, err := s.bindingsOf(ctx, ta, false)
	if err != nil {
		return err
	}
	key := r.Application + "/" + r.Name
	ta.mu.Lock()
	if stop, ok := ta.routers[key]; ok {
		stop()
		delete(ta.routers, key)
	}
	delete(ta.exchanges, key)
	ta.mu.Unlock()
	// The stream goes first: a publish arriving in between finds no stream, so no new
	// committer outlives the exchange.
	err = ta.acc.JetStream().DeleteStream(ctx, r.exchangeStream())
	s.dropCommitter(ta, r.exchangeStream())
	if kv != nil {
		if derr := kv.Delete(ctx, exchangeKey(r.Application, r.Name)); derr != nil && err == nil {
			err = derr
		}
	}
	return jsErr(err, "exchange "+r.Name)
}

// bindingsOf returns a tenant-environment's exchanges bucket, taking it up (loadExchanges)
// the first time. The bucket is created with the first exchange (create): a tenant-environment
// without exchanges has none, which spares each of them a stream, a watch and its heartbeats.
// Without create, a missing bucket is nil and no error. A bucket another node created is
// taken up when this node is asked about an exchange, or at its tenant-environment's next
// dead-letter sweep (sweepDead), which starts its routers here too.
func (s *Service) bindingsOf(ctx context.Context, ta *tenantAccount, create bool) (jetstream.KeyValue, error) {
	ta.kvMu.Lock()
	defer ta.kvMu.Unlock()
	if ta.bindings != nil {
		return ta.bindings, nil
	}
	var kv jetstream.KeyValue
	var err error
	if create {
		kv, err = ta.acc.KeyValue(ctx, jetstream.KeyValueConfig{Bucket: bindingsBucket, Description: "exchanges and their bindings", History: 1})
	} else if kv, err = ta.acc.JetStream().KeyValue(ctx, bindingsBucket); errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("exchanges bucket: %w", err)
	}
	if err := s.loadExchanges(ctx, ta, kv); err != nil {
		return nil, err
	}
	ta.bindings = kv
	ta.hasBindings.Store(true)
	return kv, nil
}

// bindingsBucket is the key-value bucket of a tenant-environment's exchanges.
const bindingsBucket = "penstock_fabric"

// loadExchanges starts the router of every exchange in an account and keeps the bindings
// current as other nodes change them.
func (s *Service) loadExchanges(ctx context.Context, ta *tenantAccount, kv jetstream.KeyValue) (err error) {
	wctx, stop := context.WithCancel(ta.ctx)
	defer func() {
		if err != nil {
			stop() // not taken up: the next attempt watches anew
		}
	}()
	w, err := kv.WatchAll(wctx)
	if err != nil {
		return fmt.Errorf("watch bindings: %w", err)
	}
	ready := make(chan struct{})
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer func() { _ = w.Stop() }()
		once := false
		for {
			select {
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e == nil {
					if !once {
						once = true
						close(ready)
					}
					continue
				}
				app, name, ok := strings.Cut(strings.TrimPrefix(e.Key(), "x."), ".")
				if !ok {
					continue
				}
				ta.mu.Lock()
				if e.Operation() != jetstream.KeyValuePut {
					delete(ta.exchanges, app+"/"+name)
					if stop, ok := ta.routers[app+"/"+name]; ok { // deleted on another node
						stop()
						delete(ta.routers, app+"/"+name)
					}
				} else {
					var x Exchange
					if json.Unmarshal(e.Value(), &x) == nil {
						x.Revision = e.Revision()
						if cur, ok := ta.exchanges[app+"/"+name]; !ok || cur.Revision < x.Revision {
							ta.exchanges[app+"/"+name] = x
						}
					}
				}
				ta.mu.Unlock()
			case <-wctx.Done():
				return
			}
		}
	}()
	select {
	case <-ready:
	case <-ctx.Done():
		return ctx.Err()
	}
	ta.mu.RLock()
	var refs []Ref
	for k := range ta.exchanges {
		app, name, _ := strings.Cut(k, "/")
		refs = append(refs, Ref{Application: app, Name: name})
	}
	ta.mu.RUnlock()
	for _, r := range refs {
		if err := s.startRouter(ta, r); errors.Is(err, ErrNotFound) {
			// A record whose stream is gone (a crash between creating or deleting the two):
			// never a reason not to start. Reading or deleting the exchange still finds it.
			s.log.Warn("exchange without its stream: not routed", "account", ta.acc.Name(), "application", r.Application, "exchange", r.Name)
		} else if err != nil {
			return err
		}
	}
	return nil
}

// startRouter consumes an exchange's stream and publishes each message to its bound queues,
// acknowledging it only when every copy is stored. A copy's id is derived from the exchange
// sequence and the queue, so a message routed again after a failure is stored once per queue.
func (s *Service) startRouter(ta *tenantAccount, r Ref) error {
	key := r.Application + "/" + r.Name
	ta.mu.Lock()
	if _, ok := ta.routers[key]; ok {
		ta.mu.Unlock()
		return nil
	}
	ctx, cancel := context.WithCancel(ta.ctx)
	ta.routers[key] = cancel
	ta.mu.Unlock()

	js := ta.acc.JetStream()
	cons, err := js.Consumer(ctx, r.exchangeStream(), routerConsumer)
	if err != nil {
		cancel()
		ta.mu.Lock()
		delete(ta.routers, key) // a later start may try again
		ta.mu.Unlock()
		return jsErr(err, "exchange router "+r.Name)
	}
	prefix := r.exchangeSubject()
	cc, err := cons.Consume(func(m jetstream.Msg) {
		ta.mu.RLock()
		x := ta.exchanges[key]
		ta.mu.RUnlock()
		rk := strings.TrimPrefix(strings.TrimPrefix(m.Subject(), prefix), ".")
		md, err := m.Metadata()
		if err != nil {
			_ = m.Nak()
			return
		}
		targets := x.Route(rk)
		for _, q := range targets {
			out := nats.NewMsg(Ref{Application: r.Application, Name: q}.queueSubject())
			out.Data = m.Data()
			for k, v := range m.Headers() {
				if !strings.HasPrefix(k, "Nats-") {
					out.Header[k] = v
				}
			}
			if id := m.Headers().Get(jetstream.MsgIDHeader); id != "" {
				out.Header.Set("Penstock-Exchange-Msg-Id", id)
			}
			out.Header.Set("Penstock-Exchange", r.Name)
			out.Header.Set("Penstock-Routing-Key", rk)
			out.Header.Set(jetstream.MsgIDHeader, "x:"+r.Name+":"+strconv.FormatUint(md.Sequence.Stream, 10)+":"+q)
			if _, err := js.PublishMsg(ctx, out); err != nil {
				if errors.Is(err, jetstream.ErrNoStreamResponse) {
					continue // the queue was deleted: its binding goes with it
				}
				s.log.Warn("exchange routing failed; retrying", "account", ta.acc.Name(), "exchange", r.Name, "queue", q, "error", err)
				_ = m.NakWithDelay(time.Second)
				return
			}
		}
		if len(targets) == 0 {
			s.m.unroutable.Inc()
		}
		s.m.routed.Add(float64(len(targets)))
		_ = m.Ack()
	}, jetstream.PullMaxMessages(500))
	if err != nil {
		cancel()
		return jsErr(err, "exchange router "+r.Name)
	}
	s.wg.Add(1)
	context.AfterFunc(ctx, func() { cc.Stop(); s.wg.Done() })
	return nil
}
