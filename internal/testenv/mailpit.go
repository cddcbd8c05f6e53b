package testenv

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// MailpitVersion is the SMTP server the notification tests run: mailpit, which .ci/services
// installs (go install github.com/axllent/mailpit@MailpitVersion) into ToolsDir.
// PENSTOCK_MAILPIT names another binary.
const MailpitVersion = "v1.33.1"

// Mailpit is a running SMTP server of a test's own: STARTTLS required, with a certificate for
// localhost (CAPEM trusts it), and a user that must authenticate.
type Mailpit struct {
	SMTPPort       int
	User, Password string
	CAPEM          string
	api            string
}

// Mail is one message the server received.
type Mail struct {
	ID      string
	Subject string
	To      []string
	Text    string
}

// StartMailpit starts mailpit on random loopback ports, stopped when the test ends. Without
// the binary the test skips, saying how to install it; under CI it fails.
func StartMailpit(t testing.TB) *Mailpit {
	t.Helper()
	bin := Tool(t, "PENSTOCK_MAILPIT", "mailpit", "github.com/axllent/mailpit@"+MailpitVersion)
	dir := t.TempDir()
	WriteCert(t, filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), "localhost")
	ca, err := os.ReadFile(filepath.Join(dir, "cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	m := &Mailpit{User: "alerts", Password: "smtp-Pass-" + strconv.FormatInt(time.Now().UnixNano(), 36), CAPEM: string(ca)}
	if err := os.WriteFile(filepath.Join(dir, "auth"), []byte(m.User+":"+m.Password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	m.SMTPPort, m.api = freePort(t), "http://127.0.0.1:"+strconv.Itoa(freePort(t))
	log := &LogBuffer{}
	cmd := exec.Command(bin, "--smtp", "127.0.0.1:"+strconv.Itoa(m.SMTPPort), "--listen", m.api[len("http://"):],
		"--database", filepath.Join(dir, "mail.db"), "--smtp-tls-cert", filepath.Join(dir, "cert.pem"),
		"--smtp-tls-key", filepath.Join(dir, "key.pem"), "--smtp-require-starttls", "--smtp-auth-file", filepath.Join(dir, "auth"),
		"--smtp-disable-rdns", "--quiet")
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(m.SMTPPort), time.Second)
		if err == nil {
			c.Close()
			if resp, err := http.Get(m.api + "/api/v1/messages"); err == nil {
				resp.Body.Close()
				return m
			}
		}
		select {
		case err := <-exited:
			t.Fatalf("mailpit exited: %v\n%s", err, log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("mailpit did not listen within a minute\n%s", log.String())
		}
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	return FreePort(t)
}

// Messages reads every message the server received, with its text, oldest first.
func (m *Mailpit) Messages(t testing.TB) []Mail {
	t.Helper()
	var list struct {
		Messages []struct {
			ID      string
			Subject string
			To      []struct{ Address string }
		}
	}
	m.get(t, "/api/v1/messages?limit=500", &list)
	out := make([]Mail, 0, len(list.Messages))
	for i := len(list.Messages) - 1; i >= 0; i-- { // the API lists newest first
		lm := list.Messages[i]
		var full struct{ Text string }
		m.get(t, "/api/v1/message/"+lm.ID, &full)
		mail := Mail{ID: lm.ID, Subject: lm.Subject, Text: full.Text}
		for _, a := range lm.To {
			mail.To = append(mail.To, a.Address)
		}
		out = append(out, mail)
	}
	return out
}

func (m *Mailpit) get(t testing.TB, path string, v any) {
	t.Helper()
	resp, err := http.Get(m.api + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("mailpit %s: %s %s", path, resp.Status, b.String())
	}
	if err := json.Unmarshal(b.Bytes(), v); err != nil {
		t.Fatal(fmt.Errorf("mailpit %s: %w", path, err))
	}
}
