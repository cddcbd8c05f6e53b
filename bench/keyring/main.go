// Command keyring measures sealing and opening records through the keyring (Tink AES-256-GCM
// data keys, associated data binding the record's identity) beside raw AES-256-GCM from the
// standard library, in the same run: the ratio is the keyring's overhead.
//
//	go run ./bench/keyring
package main

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher" // the peer: raw AES-GCM, what the keyring is measured against
	"crypto/rand"
	"flag"
	"fmt"
	"log"
	"time"

	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/keyring/keyringtest"
)

func main() {
	budget := flag.Duration("time", 2*time.Second, "time per case")
	flag.Parse()
	ctx := context.Background()

	st, closeStack, err := keyringtest.OpenTemp(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer closeStack()
	kr := st.Keyring
	scope := keyring.Scope{Tenant: "acme", Environment: "production", Application: "billing"}

	key := make([]byte, 32)
	rand.Read(key)
	block, _ := aes.NewCipher(key)
	gcm, _ := cipher.NewGCM(block)
	ad := []byte("penstock/v1 scope kind id of similar length")

	fmt.Printf("seal + open round trips, %s per case, one goroutine\n\n", *budget)
	fmt.Printf("%-8s %22s %22s %8s\n", "record", "keyring MB/s (ops/s)", "raw AES-GCM MB/s", "overhead")
	for _, size := range []int{1 << 10, 64 << 10} {
		pt := make([]byte, size)
		rand.Read(pt)
		kops := measure(*budget, func() {
			ct, err := kr.Seal(ctx, scope, "record", "order-000123", pt)
			if err != nil {
				log.Fatal(err)
			}
			out, err := kr.Unseal(ctx, scope, "record", "order-000123", ct)
			if err != nil || len(out) != size {
				log.Fatal(err)
			}
		})
		nonce := make([]byte, gcm.NonceSize())
		rops := measure(*budget, func() {
			rand.Read(nonce)
			ct := gcm.Seal(append([]byte{}, nonce...), nonce, pt, ad)
			out, err := gcm.Open(nil, ct[:len(nonce)], ct[len(nonce):], ad)
			if err != nil || !bytes.Equal(out[:8], pt[:8]) {
				log.Fatal(err)
			}
		})
		mb := func(ops float64) float64 { return ops * float64(size) / 1e6 }
		fmt.Printf("%-8s %12.0f (%7.0f) %22.0f %7.1f%%\n", fmt.Sprintf("%d KiB", size>>10),
			mb(kops), kops, mb(rops), (rops/kops-1)*100)
	}
}

// measure runs f repeatedly for about d and returns operations per second.
func measure(d time.Duration, f func()) float64 {
	for range 50 { // warm up: first use creates the data key
		f()
	}
	n, start := 0, time.Now()
	for time.Since(start) < d {
		for range 20 {
			f()
		}
		n += 20
	}
	return float64(n) / time.Since(start).Seconds()
}
