# siterelay. The two commands a newcomer needs: `make run` and `make check`.
GO        ?= go
STATE     ?= ./var
FUZZTIME  ?= 10s

.PHONY: run check deps vet test race fuzz integration bench build

## run: the relay on this machine, embedded default (SMTP on 127.0.0.1:2525, mail to $(STATE)/outbox)
run:
	$(GO) run ./cmd/relayd -dev -state $(STATE)

build:
	$(GO) build ./...

## check: every test (installs the Debian packages the real-peer tests need)
check: deps vet race fuzz integration

deps:
	@if [ "$$(id -u)" = 0 ]; then .ci/install; else echo "not root: skipping apt packages (integration tests need them)"; fi

vet:
	$(GO) vet ./...
	$(GO) vet -tags integration ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }

test:
	$(GO) test ./...

race:
	$(GO) test -race -count=1 ./...

## fuzz: a short run of every fuzz target (FUZZTIME each)
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  dir=$$($(GO) list -f '{{.Dir}}' $$pkg); \
	  for f in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go 2>/dev/null | sed 's/func //'); do \
	    echo "fuzz $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

## integration: tests against real peers (swaks, smtplib, Postfix, avahi, QEMU); needs root
integration:
	$(GO) test -tags integration -count=1 -timeout 30m ./...

## bench: load through relayd, printed figures
bench:
	@echo "bench: not yet"
