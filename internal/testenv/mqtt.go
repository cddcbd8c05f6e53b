package testenv

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// MQTTConnack sends one MQTT 3.1.1 CONNECT (clean session) over TLS and returns the CONNACK's
// return code: 0 accepted, 4 bad user name or password, 5 not authorized. A connection closed
// without a CONNACK is an error. Paho reports a refusal that the server follows with a close
// as "EOF", like a dropped connection; this tells the two apart.
func MQTTConnack(addr string, tc *tls.Config, clientID, user, pass string, timeout time.Duration) (byte, error) {
	d := &net.Dialer{Timeout: timeout}
	c, err := tls.DialWithDialer(d, "tcp", addr, tc)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return 0, err
	}
	str := func(b []byte, s string) []byte { return append(append(b, byte(len(s)>>8), byte(len(s))), s...) }
	body := str(nil, "MQTT")
	body = append(body, 4, 0xC2, 0, 30) // level 4; user name, password, clean session; keep-alive 30s
	body = str(str(str(body, clientID), user), pass)
	pkt := []byte{0x10}
	for n := len(body); ; {
		b := byte(n % 128)
		if n /= 128; n > 0 {
			b |= 0x80
		}
		pkt = append(pkt, b)
		if n == 0 {
			break
		}
	}
	if _, err := c.Write(append(pkt, body...)); err != nil {
		return 0, err
	}
	var ack [4]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		return 0, fmt.Errorf("no CONNACK: %w", err)
	}
	if ack[0] != 0x20 || ack[1] != 2 {
		return 0, errors.New("not a CONNACK")
	}
	return ack[3], nil
}
