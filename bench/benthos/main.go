// Command benthos is the peer of bench/pipeline: Benthos (pinned, in a module of its own so it
// never enters Penstock's dependencies) doing the same CSV -> map -> JSON-lines job, with its
// batching and parallelism set by flags. It prints one line: records, seconds, records/s.
//
//	go build -o /tmp/benthos-peer . && /tmp/benthos-peer -in rows.csv -out rows.jsonl -batch 1000 -threads 2
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"time"

	_ "github.com/redpanda-data/benthos/v4/public/components/io"
	_ "github.com/redpanda-data/benthos/v4/public/components/pure"
	"github.com/redpanda-data/benthos/v4/public/service"
)

func main() {
	in := flag.String("in", "", "CSV file with a header: id,name,amount")
	out := flag.String("out", "", "JSON-lines file to write")
	batch := flag.Int("batch", 1000, "csv input batch_count")
	threads := flag.Int("threads", -1, "pipeline threads (-1: one per CPU)")
	rows := flag.Int("rows", 0, "rows expected, for the rate")
	flag.Parse()
	b := service.NewStreamBuilder()
	b.SetLoggerYAML(`level: error`)
	if err := b.SetYAML(fmt.Sprintf(`
input:
  csv:
    paths: [ %q ]
    parse_header_row: true
    batch_count: %d
pipeline:
  threads: %d
  processors:
    - mapping: |
        root.id = this.id.number()
        root.name = this.name.uppercase()
        root.cents = (this.amount.number() * 100).floor()
output:
  file:
    path: %q
    codec: lines
`, *in, *batch, *threads, *out)); err != nil {
		log.Fatal(err)
	}
	stream, err := b.Build()
	if err != nil {
		log.Fatal(err)
	}
	start := time.Now()
	if err := stream.Run(context.Background()); err != nil {
		log.Fatal(err)
	}
	el := time.Since(start)
	fmt.Printf("benthos %d records %.3f s %.0f records/s\n", *rows, el.Seconds(), float64(*rows)/el.Seconds())
}
