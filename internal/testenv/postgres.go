package testenv

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// PostgreSQLDSN is the machine's PostgreSQL, database test, as postgres (trust auth).
const PostgreSQLDSN = "host=127.0.0.1 port=5432 user=postgres dbname=test sslmode=disable"

// PostgreSQL connects to the machine's PostgreSQL (skipping on a laptop without it, failing in
// CI) and closes the connection when the test ends.
func PostgreSQL(t testing.TB) *pgx.Conn {
	t.Helper()
	Require(t, "PostgreSQL", "127.0.0.1:5432", "pg_ctlcluster $(ls /etc/postgresql) main start")
	c, err := pgx.Connect(context.Background(), PostgreSQLDSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// Table creates a table prefix_<unique> with the given column definitions, dropped when the
// test ends, and returns its name.
func Table(t testing.TB, c *pgx.Conn, prefix, columns string) string {
	t.Helper()
	name := fmt.Sprintf("%s_%d", prefix, time.Now().UnixNano())
	if _, err := c.Exec(context.Background(), "CREATE TABLE "+name+" ("+columns+")"); err != nil {
		t.Fatalf("create table %s: %v", name, err)
	}
	t.Cleanup(func() { c.Exec(context.Background(), "DROP TABLE IF EXISTS "+name) })
	return name
}
