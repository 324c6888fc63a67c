#!/bin/bash
# As run on 2026-12-06 (under flock /tmp/kiln-cpu.lock), kept as it was: gRPC at 500 req/s, 16
# sender threads, exactly 3 measured windows of 2 s (no stability selection), 5 rounds of:
# perf_analyzer with its client's default channel sharing (pa6), perf_analyzer with a channel per
# worker (pa1), kiln loadgen --latency-from send (lg). /tmp/lg/repo held runs/cmp/kiln-resnet.onnx
# as model "cifar" (max_batch_size 32, max_queue_delay_microseconds 500). The CSVs beside it are
# its output (columns 2, 10, 13: throughput, p50, p99 in microseconds).
cd /work/main
K=build/release/kiln
$K serve --models /tmp/lg/repo --port 18000 --grpc-port 18001 --metrics-port 0 --threads 2 > /tmp/share/serve.log 2>&1 &
SP=$!
sleep 4
for r in 1 2 3 4 5; do
  for tool in pa6 pa1 lg; do
    case $tool in
      pa6) scripts/perf_analyzer.sh -m cifar -u 127.0.0.1:18001 -i grpc -p 2000 -r 10 --verbose-csv -f /tmp/share/$tool-$r.csv --request-rate-range 500 --max-threads 16 -s 1000 > /tmp/share/$tool-$r.log 2>&1 ;;
      pa1) TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT=1 scripts/perf_analyzer.sh -m cifar -u 127.0.0.1:18001 -i grpc -p 2000 -r 10 --verbose-csv -f /tmp/share/$tool-$r.csv --request-rate-range 500 --max-threads 16 -s 1000 > /tmp/share/$tool-$r.log 2>&1 ;;
      lg) $K loadgen -i grpc --url 127.0.0.1:18001 -m cifar --mode binary --window-ms 2000 --max-windows 11 --request-rate 500 --max-threads 16 --latency-from send --stability 1000 --csv /tmp/share/$tool-$r.csv > /tmp/share/$tool-$r.log 2>&1 ;;
    esac
    echo "$r $tool $(tail -1 /tmp/share/$tool-$r.csv | cut -d, -f2,10,13)"
  done
done
kill $SP
