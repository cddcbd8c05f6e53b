package engine

// NativeLoginsWaiting is how many native logins wait for a decision: a test's barrier.
func (e *Engine) NativeLoginsWaiting() int64 { return e.embedded.auth.waiting.Load() }
