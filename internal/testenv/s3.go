package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"gocloud.dev/blob"
	"gocloud.dev/blob/s3blob"
)

// VersityGW is the S3-compatible server the S3 tests run: versitygw, which .ci/services
// installs (go install github.com/versity/versitygw/cmd/versitygw@VersityGWVersion) into
// ToolsDir. PENSTOCK_VERSITYGW names another binary.
const VersityGWVersion = "v1.8.0"

// ToolsDir is where .ci/services installs the programs tests run.
func ToolsDir() string {
	if d := os.Getenv("PENSTOCK_CI_TOOLS"); d != "" {
		return d
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "penstock-ci", "bin")
}

// Tool finds a program .ci/services installs into ToolsDir (the variable env names another
// binary). Without it the test skips, saying how to install it; under CI it fails.
func Tool(t testing.TB, env, name, module string) string {
	t.Helper()
	bin := os.Getenv(env)
	if bin == "" {
		bin = filepath.Join(ToolsDir(), name)
	}
	if _, err := os.Stat(bin); err != nil {
		msg := name + " is not installed at " + bin + " (bash .ci/services installs it, or: GOBIN=" + ToolsDir() + " go install " + module + ")"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return bin
}

// S3Bucket starts an S3-compatible server of the test's own (versitygw on a random loopback
// port, its objects in a temporary directory, signature checks on), creates a bucket in it
// and opens the bucket through gocloud.dev's s3blob, as a backup target is opened. Without
// the binary the test skips, saying how to install it; under CI it fails.
func S3Bucket(t testing.TB) *blob.Bucket {
	t.Helper()
	tg := S3Target(t)
	client := s3.New(s3.Options{
		Region: "us-east-1", BaseEndpoint: aws.String(tg.Endpoint), UsePathStyle: true,
		Credentials:                credentials.NewStaticCredentialsProvider(tg.AccessKey, tg.SecretKey, ""),
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	})
	b, err := s3blob.OpenBucket(context.Background(), client, tg.Bucket, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// S3 is a running S3-compatible server's bucket and credentials.
type S3 struct {
	Endpoint, Bucket     string
	AccessKey, SecretKey string
}

// URL is the bucket as a backup.target.
func (s S3) URL() string { return "s3://" + s.Bucket + "?region=us-east-1&endpoint=" + s.Endpoint }

// S3Target starts an S3-compatible server of the test's own (see S3Bucket) with a bucket in
// it, and returns where it is and its credentials.
func S3Target(t testing.TB) S3 {
	t.Helper()
	bin := Tool(t, "PENSTOCK_VERSITYGW", "versitygw", "github.com/versity/versitygw/cmd/versitygw@"+VersityGWVersion)
	port := FreePort(t)
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "data"), 0o700); err != nil {
		t.Fatal(err)
	}
	secret := make([]byte, 16)
	_, _ = rand.Read(secret)
	access, key := "penstock-test", hex.EncodeToString(secret)
	var log bytes.Buffer
	cmd := exec.Command(bin, "--port", "127.0.0.1:"+strconv.Itoa(port), "--quiet", "posix", filepath.Join(dir, "data"))
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+access, "ROOT_SECRET_KEY="+key)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})

	client := s3.New(s3.Options{
		Region: "us-east-1", BaseEndpoint: aws.String("http://127.0.0.1:" + strconv.Itoa(port)), UsePathStyle: true,
		Credentials:                credentials.NewStaticCredentialsProvider(access, key, ""),
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	})
	const bucket = "penstock-backups"
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		_, err := client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)})
		if err == nil {
			break
		}
		select {
		case werr := <-exited:
			t.Fatalf("versitygw exited (%v): %s", werr, log.String())
		case <-ctx.Done():
			t.Fatalf("versitygw on port %d: no bucket after 1m: %v (%s)", port, errors.Join(err, ctx.Err()), log.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return S3{Endpoint: "http://127.0.0.1:" + strconv.Itoa(port), Bucket: bucket, AccessKey: access, SecretKey: key}
}
