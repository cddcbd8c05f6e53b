package engine

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// With group sync, every write Penstock makes through an account's JetStream context returns
// only once it is on disk: these wrappers call the group sync after each call that changes
// stored state (publishes, key-value writes, stream and consumer definitions, purges and
// deletions). A consumer's acknowledgements are not synced: at worst a message is delivered
// again after a power cut, which at-least-once delivery allows. PublishAsync is not covered;
// Penstock does not use it. The fabric's committer publishes on the core connection and
// calls Account.Sync itself, once for many publishers.

type syncFunc func(context.Context) error

// durable returns v once the write it reports is on disk.
func durable[T any](ctx context.Context, sync syncFunc, v T, err error) (T, error) {
	if err != nil {
		return v, err
	}
	if err := sync(ctx); err != nil {
		var zero T
		return zero, fmt.Errorf("written but not made durable: %w", err)
	}
	return v, nil
}

func durableErr(ctx context.Context, sync syncFunc, err error) error {
	_, err = durable(ctx, sync, struct{}{}, err)
	return err
}

type durableJS struct {
	jetstream.JetStream
	sync syncFunc
}

func (d durableJS) Publish(ctx context.Context, subject string, payload []byte, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	pa, err := d.JetStream.Publish(ctx, subject, payload, opts...)
	return durable(ctx, d.sync, pa, err)
}

func (d durableJS) PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	pa, err := d.JetStream.PublishMsg(ctx, msg, opts...)
	return durable(ctx, d.sync, pa, err)
}

func (d durableJS) stream(ctx context.Context, s jetstream.Stream, err error) (jetstream.Stream, error) {
	s, err = durable(ctx, d.sync, s, err)
	if err != nil {
		return nil, err
	}
	return durableStream{Stream: s, sync: d.sync}, nil
}

func (d durableJS) CreateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	s, err := d.JetStream.CreateStream(ctx, cfg)
	return d.stream(ctx, s, err)
}

func (d durableJS) UpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	s, err := d.JetStream.UpdateStream(ctx, cfg)
	return d.stream(ctx, s, err)
}

func (d durableJS) CreateOrUpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	s, err := d.JetStream.CreateOrUpdateStream(ctx, cfg)
	return d.stream(ctx, s, err)
}

// Stream looks a stream up (nothing to sync) and returns it with its writes synced.
func (d durableJS) Stream(ctx context.Context, name string) (jetstream.Stream, error) {
	s, err := d.JetStream.Stream(ctx, name)
	if err != nil {
		return nil, err
	}
	return durableStream{Stream: s, sync: d.sync}, nil
}

func (d durableJS) DeleteStream(ctx context.Context, name string) error {
	return durableErr(ctx, d.sync, d.JetStream.DeleteStream(ctx, name))
}

func (d durableJS) CreateOrUpdateConsumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	c, err := d.JetStream.CreateOrUpdateConsumer(ctx, stream, cfg)
	return durable(ctx, d.sync, c, err)
}

func (d durableJS) CreateConsumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	c, err := d.JetStream.CreateConsumer(ctx, stream, cfg)
	return durable(ctx, d.sync, c, err)
}

func (d durableJS) UpdateConsumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	c, err := d.JetStream.UpdateConsumer(ctx, stream, cfg)
	return durable(ctx, d.sync, c, err)
}

func (d durableJS) DeleteConsumer(ctx context.Context, stream, consumer string) error {
	return durableErr(ctx, d.sync, d.JetStream.DeleteConsumer(ctx, stream, consumer))
}

func (d durableJS) kv(ctx context.Context, kv jetstream.KeyValue, err error) (jetstream.KeyValue, error) {
	kv, err = durable(ctx, d.sync, kv, err)
	if err != nil {
		return nil, err
	}
	return durableKV{KeyValue: kv, sync: d.sync}, nil
}

// KeyValue looks a bucket up (nothing to sync) and returns it with its writes synced.
func (d durableJS) KeyValue(ctx context.Context, bucket string) (jetstream.KeyValue, error) {
	kv, err := d.JetStream.KeyValue(ctx, bucket)
	if err != nil {
		return nil, err
	}
	return durableKV{KeyValue: kv, sync: d.sync}, nil
}

func (d durableJS) CreateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	kv, err := d.JetStream.CreateKeyValue(ctx, cfg)
	return d.kv(ctx, kv, err)
}

func (d durableJS) UpdateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	kv, err := d.JetStream.UpdateKeyValue(ctx, cfg)
	return d.kv(ctx, kv, err)
}

func (d durableJS) CreateOrUpdateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	kv, err := d.JetStream.CreateOrUpdateKeyValue(ctx, cfg)
	return d.kv(ctx, kv, err)
}

func (d durableJS) DeleteKeyValue(ctx context.Context, bucket string) error {
	return durableErr(ctx, d.sync, d.JetStream.DeleteKeyValue(ctx, bucket))
}

type durableStream struct {
	jetstream.Stream
	sync syncFunc
}

func (d durableStream) Purge(ctx context.Context, opts ...jetstream.StreamPurgeOpt) error {
	return durableErr(ctx, d.sync, d.Stream.Purge(ctx, opts...))
}

func (d durableStream) DeleteMsg(ctx context.Context, seq uint64) error {
	return durableErr(ctx, d.sync, d.Stream.DeleteMsg(ctx, seq))
}

func (d durableStream) SecureDeleteMsg(ctx context.Context, seq uint64) error {
	return durableErr(ctx, d.sync, d.Stream.SecureDeleteMsg(ctx, seq))
}

func (d durableStream) CreateOrUpdateConsumer(ctx context.Context, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	c, err := d.Stream.CreateOrUpdateConsumer(ctx, cfg)
	return durable(ctx, d.sync, c, err)
}

func (d durableStream) CreateConsumer(ctx context.Context, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	c, err := d.Stream.CreateConsumer(ctx, cfg)
	return durable(ctx, d.sync, c, err)
}

func (d durableStream) UpdateConsumer(ctx context.Context, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	c, err := d.Stream.UpdateConsumer(ctx, cfg)
	return durable(ctx, d.sync, c, err)
}

func (d durableStream) DeleteConsumer(ctx context.Context, consumer string) error {
	return durableErr(ctx, d.sync, d.Stream.DeleteConsumer(ctx, consumer))
}

type durableKV struct {
	jetstream.KeyValue
	sync syncFunc
}

func (d durableKV) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	rev, err := d.KeyValue.Put(ctx, key, value)
	return durable(ctx, d.sync, rev, err)
}

func (d durableKV) PutString(ctx context.Context, key, value string) (uint64, error) {
	rev, err := d.KeyValue.PutString(ctx, key, value)
	return durable(ctx, d.sync, rev, err)
}

func (d durableKV) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	rev, err := d.KeyValue.Create(ctx, key, value, opts...)
	return durable(ctx, d.sync, rev, err)
}

func (d durableKV) Update(ctx context.Context, key string, value []byte, revision uint64) (uint64, error) {
	rev, err := d.KeyValue.Update(ctx, key, value, revision)
	return durable(ctx, d.sync, rev, err)
}

func (d durableKV) Delete(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error {
	return durableErr(ctx, d.sync, d.KeyValue.Delete(ctx, key, opts...))
}

func (d durableKV) Purge(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error {
	return durableErr(ctx, d.sync, d.KeyValue.Purge(ctx, key, opts...))
}

func (d durableKV) PurgeDeletes(ctx context.Context, opts ...jetstream.KVPurgeOpt) error {
	return durableErr(ctx, d.sync, d.KeyValue.PurgeDeletes(ctx, opts...))
}
