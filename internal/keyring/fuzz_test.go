package keyring

import (
	"bytes"
	"errors"
	"testing"

	"github.com/penstock/penstock/internal/config"
)

// FuzzUnseal feeds arbitrary bytes and identities to the decrypt path: it never panics, it
// fails only with the package's own errors, and it returns a plaintext only for the exact
// ciphertext and identity that produced it.
func FuzzUnseal(f *testing.F) {
	st := open(f, f.TempDir(), config.Keyring{})
	plain := []byte("fuzz plaintext")
	valid, err := st.kr.Seal(ctx, acmeApp, "secret", "a", plain)
	if err != nil {
		f.Fatal(err)
	}
	if _, err := st.kr.Seal(ctx, globex, "secret", "a", plain); err != nil {
		f.Fatal(err)
	}
	f.Add(valid, "secret", "a", uint8(0))
	f.Add(valid[:len(valid)-1], "secret", "a", uint8(0))
	f.Add(valid[:6], "secret", "a", uint8(0))
	f.Add(append(bytes.Clone(valid), 0), "secret", "a", uint8(0))
	f.Add(valid, "secret", "a", uint8(1))
	f.Add(valid, "token", "a", uint8(0))
	f.Add([]byte{}, "secret", "", uint8(2))
	f.Add([]byte{0x01, 0, 0, 0, 0}, "x", "y", uint8(3))
	scopes := []Scope{acmeApp, globex, acmeProd, {Tenant: "nobody"}}
	f.Fuzz(func(t *testing.T, ct []byte, kind, id string, sel uint8) {
		s := scopes[int(sel)%len(scopes)]
		pt, err := st.kr.Unseal(ctx, s, kind, id, ct)
		if err == nil {
			if s != acmeApp || kind != "secret" || id != "a" || !bytes.Equal(ct, valid) || !bytes.Equal(pt, plain) {
				t.Fatalf("opened %x as %v/%s/%s: %q", ct, s, kind, id, pt)
			}
			return
		}
		if pt != nil {
			t.Fatal("plaintext returned with an error")
		}
		if checkIdentity(s, kind, id) != nil {
			return // refused as an invalid identity before any decryption
		}
		for _, known := range []error{ErrMalformed, ErrUnknownKeyVersion, ErrDecrypt, ErrNoKey, ErrDestroyed} {
			if errors.Is(err, known) {
				return
			}
		}
		t.Fatalf("unexpected error kind: %v", err)
	})
}

// FuzzMasterUnwrap feeds arbitrary bytes to the master key's unwrap, the path every wrapped
// data key and the store key file go through: never a panic, never a plaintext for bytes the
// key did not seal with that associated data.
func FuzzMasterUnwrap(f *testing.F) {
	ms, err := loadMasters(ctx, f.TempDir(), config.Keyring{})
	if err != nil {
		f.Fatal(err)
	}
	sealed, err := ms.current.EncryptWithContext(ctx, []byte("payload"), []byte("ad"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(sealed, []byte("ad"))
	f.Add(sealed[:len(sealed)-1], []byte("ad"))
	f.Add(sealed, []byte("other"))
	f.Add([]byte{}, []byte{})
	f.Fuzz(func(t *testing.T, ct, ad []byte) {
		pt, err := ms.current.DecryptWithContext(ctx, ct, ad)
		if err == nil && (!bytes.Equal(ct, sealed) || string(ad) != "ad" || string(pt) != "payload") {
			t.Fatalf("unwrapped %x with ad %q to %q", ct, ad, pt)
		}
	})
}
