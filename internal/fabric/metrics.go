package fabric

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	published, publishedBytes, delivered, acked *prometheus.CounterVec
	deadLettered, quotaExceeded                 *prometheus.CounterVec
	nativeAuth                                  *prometheus.CounterVec
	replayed, routed, unroutable, revoked       prometheus.Counter
	idleClosed, consumersDropped                prometheus.Counter
	commitSize, commitLatency                   prometheus.Histogram

	mu    sync.Mutex
	marks map[Ref]rateMark
}

type rateMark struct {
	at             time.Time
	published, ack uint64
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		published: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "penstock_fabric_published_total",
			Help: "Messages published through Penstock, by path."}, []string{"path"}),
		publishedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "penstock_fabric_published_bytes_total",
			Help: "Payload bytes published through Penstock, by path."}, []string{"path"}),
		delivered: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "penstock_fabric_delivered_total",
			Help: "Messages delivered to consumers through Penstock, by path."}, []string{"path"}),
		acked: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "penstock_fabric_acked_total",
			Help: "Messages acknowledged through Penstock, by path."}, []string{"path"}),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "penstock_fabric_dead_lettered_total",
			Help: "Messages moved to a dead-letter queue, by reason."}, []string{"reason"}),
		quotaExceeded: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "penstock_fabric_quota_exceeded_total",
			Help: "Publishes refused by a tenant quota, by quota and path."}, []string{"quota", "path"}),
		nativeAuth: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "penstock_fabric_native_auth_total",
			Help: "Native-protocol connection attempts, by result."}, []string{"result"}),
		replayed:   prometheus.NewCounter(prometheus.CounterOpts{Name: "penstock_fabric_replayed_total", Help: "Dead letters replayed to their queue."}),
		routed:     prometheus.NewCounter(prometheus.CounterOpts{Name: "penstock_fabric_routed_total", Help: "Copies exchanges stored in bound queues."}),
		unroutable: prometheus.NewCounter(prometheus.CounterOpts{Name: "penstock_fabric_unroutable_total", Help: "Exchange messages no binding matched (dropped)."}),
		revoked:    prometheus.NewCounter(prometheus.CounterOpts{Name: "penstock_fabric_native_closed_total", Help: "Native connections closed because their key or role no longer allows them."}),
		idleClosed: prometheus.NewCounter(prometheus.CounterOpts{Name: "penstock_fabric_idle_closed_total",
			Help: "Tenant-environments this node let go after fabric.idle_close unused (taken up again on next use)."}),
		consumersDropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "penstock_fabric_idle_consumers_deleted_total",
			Help: "Queue consumers holding nothing deleted by the idle close (made again by the next consume or native login)."}),
		commitSize: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "penstock_fabric_commit_messages",
			Help: "Messages per group commit.", Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000}}),
		commitLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "penstock_fabric_commit_seconds",
			Help: "Time to make one group commit durable.", Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}),
		marks: map[Ref]rateMark{},
	}
	reg.MustRegister(m.published, m.publishedBytes, m.delivered, m.acked, m.deadLettered, m.quotaExceeded, m.nativeAuth,
		m.replayed, m.routed, m.unroutable, m.revoked, m.idleClosed, m.consumersDropped, m.commitSize, m.commitLatency)
	return m
}

// forget drops a deleted queue's rate mark.
func (m *metrics) forget(r Ref) {
	m.mu.Lock()
	delete(m.marks, r)
	m.mu.Unlock()
}

// rates returns messages per second published and settled since the previous call for the
// same queue (0 on the first).
func (m *metrics) rates(r Ref, published, acked uint64) (float64, float64) {
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	prev, ok := m.marks[r]
	m.marks[r] = rateMark{at: now, published: published, ack: acked}
	dt := now.Sub(prev.at).Seconds()
	if !ok || dt <= 0 || published < prev.published || acked < prev.ack {
		return 0, 0
	}
	return float64(published-prev.published) / dt, float64(acked-prev.ack) / dt
}
