package engine

import "github.com/nats-io/nats-server/v2/server"

// DisconnectAccount closes every client connection bound to the named account and returns how
// many it closed. The lifecycle uses it to end the native connections of a scope being deleted
// at once, not at the fabric's next sweep. Without an embedded server there is nothing of ours
// to close.
func (e *Engine) DisconnectAccount(name string) (int, error) {
	if e.embedded == nil {
		return 0, nil
	}
	cz, err := e.embedded.ns.Connz(&server.ConnzOptions{Account: name, Limit: 1 << 20})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, c := range cz.Conns {
		if c.Account == name && e.embedded.ns.DisconnectClientByID(c.Cid) == nil {
			n++
		}
	}
	return n, nil
}
