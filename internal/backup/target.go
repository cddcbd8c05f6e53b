package backup

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"gocloud.dev/blob"
	"gocloud.dev/blob/fileblob"
	"gocloud.dev/blob/s3blob"

	"github.com/penstock/penstock/internal/redact"
)

// Target is where backups are stored.
type Target struct {
	// URL is file:///absolute/dir, or s3://bucket[/prefix]?region=R[&endpoint=https://host:port]
	// for AWS S3 or any S3-compatible store (the endpoint is then addressed path-style).
	URL string
	// AccessKeyID and SecretAccessKey are the S3 credentials; without them the AWS SDK's
	// own chain (environment, shared files, instance role) is used.
	AccessKeyID, SecretAccessKey redact.Secret
}

// OpenTarget opens the bucket a target names. Errors name the setting, never a credential.
func OpenTarget(ctx context.Context, t Target) (*blob.Bucket, error) {
	u, err := url.Parse(t.URL)
	if err != nil || u.Scheme == "" {
		return nil, errors.New("backup.target: must be a URL: file:///dir or s3://bucket?region=R")
	}
	switch u.Scheme {
	case "file":
		dir := u.Path
		if u.Host != "" || !filepath.IsAbs(dir) {
			return nil, fmt.Errorf("backup.target: %q: a file:// target needs an absolute directory (file:///var/backups/penstock)", t.URL)
		}
		return fileblob.OpenBucket(dir, &fileblob.Options{CreateDir: true, DirFileMode: 0o700, NoTempDir: true,
			Metadata: fileblob.MetadataDontWrite})
	case "s3":
		return openS3(ctx, t, u)
	}
	return nil, fmt.Errorf("backup.target: scheme %q: file:// or s3://", u.Scheme)
}

func openS3(ctx context.Context, t Target, u *url.URL) (*blob.Bucket, error) {
	if u.Host == "" {
		return nil, errors.New("backup.target: an s3:// target names its bucket: s3://bucket?region=R")
	}
	q := u.Query()
	for k := range q {
		if k != "region" && k != "endpoint" {
			return nil, fmt.Errorf("backup.target: unknown parameter %q (region, endpoint)", k)
		}
	}
	region := q.Get("region")
	if region == "" {
		return nil, errors.New("backup.target: an s3:// target needs ?region=")
	}
	if t.AccessKeyID.IsZero() != t.SecretAccessKey.IsZero() {
		return nil, errors.New("backup.access_key_id and backup.secret_access_key: set both or neither")
	}
	var client *s3.Client
	if t.AccessKeyID.IsZero() {
		// The SDK's own credential chain, through the driver's URL opener.
		v := url.Values{"region": {region}}
		if ep := q.Get("endpoint"); ep != "" {
			v.Set("endpoint", ep)
			v.Set("use_path_style", "true")
		}
		b, err := blob.OpenBucket(ctx, "s3://"+u.Host+"?"+v.Encode())
		if err != nil {
			return nil, fmt.Errorf("backup.target: %w", err)
		}
		return withPrefix(b, u.Path), nil
	}
	opts := s3.Options{
		Region:                     region,
		Credentials:                credentials.NewStaticCredentialsProvider(t.AccessKeyID.Reveal(), t.SecretAccessKey.Reveal(), ""),
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	}
	if ep := q.Get("endpoint"); ep != "" {
		e, err := url.Parse(ep)
		if err != nil || (e.Scheme != "https" && e.Scheme != "http") || e.Host == "" {
			return nil, errors.New("backup.target: endpoint must be an http(s):// URL")
		}
		opts.BaseEndpoint, opts.UsePathStyle = aws.String(ep), true
	}
	client = s3.New(opts)
	b, err := s3blob.OpenBucket(ctx, client, u.Host, nil)
	if err != nil {
		return nil, fmt.Errorf("backup.target: %w", err)
	}
	return withPrefix(b, u.Path), nil
}

// withPrefix keeps a target's objects under the URL's path, if it has one.
func withPrefix(b *blob.Bucket, p string) *blob.Bucket {
	p = strings.Trim(p, "/")
	if p == "" {
		return b
	}
	return blob.PrefixedBucket(b, p+"/")
}

// Redacted is a target URL fit for a log line: without user information or query values.
func Redacted(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "[unparsable URL]"
	}
	u.User = nil
	q := u.Query()
	for k := range q {
		if k != "region" && k != "endpoint" {
			q.Set(k, "[redacted]")
		}
	}
	u.RawQuery = q.Encode()
	return u.String()
}
