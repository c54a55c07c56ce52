# mxgate - the one entry point: deps, all, run, test, bench, fuzz, asan, clean.
#
# `make test` and `make run` install what they need first (make deps), so a
# fresh Debian 12 machine needs nothing by hand.

CC      ?= gcc
CXX     ?= g++
CLANG   ?= clang
B       := build

WARN    := -Wall -Wextra -Werror -Wpedantic
CFLAGS  := -std=c17 -O2 -g $(WARN) -D_GNU_SOURCE -fno-strict-aliasing
SAN     := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
CMOCKA  := $(shell pkg-config --libs cmocka 2>/dev/null || echo -lcmocka)
INIH    := $(shell pkg-config --libs inih 2>/dev/null || echo -linih)

# Debian 12 packages: build, tests (real peers) and benchmarks.
DEB_PKGS := gcc g++ make pkg-config clang libclang-rt-14-dev \
	liburing-dev libjemalloc-dev libspf2-dev libinih-dev libcmocka-dev libunbound-dev libhiredis-dev \
	libbenchmark-dev libmicrohttpd-dev libssl-dev openssl python3 python3-pytest python3-yaml postfix swaks unbound haproxy \
	redis-server prometheus python3-matplotlib rspamd python3-dkim curl

CORE_SRC := $(wildcard core/*.c)
CORE_HDR := $(wildcard core/*.h)
CORE_OBJ := $(CORE_SRC:%.c=$(B)/%.o)
CORE_SAN := $(CORE_SRC:%.c=$(B)/san/%.o)

UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(B)/tests/%) $(B)/tests/test_scan_portable

FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN := $(FUZZ_SRC:tests/fuzz/%.c=$(B)/fuzz/%)
FUZZ_TIME ?= 600
FUZZ_TEST_TIME ?= 10

BENCH_SRC := $(wildcard bench/*.cc)

SRV_SRC  := $(wildcard workers/*.c workers/spfd/*.c filters/*.c)
SRV_HDR  := $(wildcard workers/*.h workers/spfd/*.h filters/*.h)
SRV_INC  := -Icore -Iworkers -Iworkers/spfd -Ifilters
SRV_LIBS := -luring $(INIH) -lspf2 -lresolv -lunbound -lhiredis -lmicrohttpd -lssl -lcrypto -lpthread

.PHONY: all deps run test unit fuzz fuzz-test fuzz-wire bench bench-e2e bench-spf bench-dnsbl bench-fleet \
	bench-compare bench-scale bench-content asan clean

# mxgate-load, the load generator and fault-injecting sink (bench/load/).
include bench/load/load.mk

all: $(B)/libmxcore.a $(B)/mxgate $(LOAD_BIN)

# jemalloc is linked, not preloaded (DESIGN.md). The ASan build leaves it out:
# the sanitizer brings its own allocator.
$(B)/mxgate: $(SRV_SRC) $(SRV_HDR) $(CORE_HDR) $(B)/libmxcore.a
	$(CC) $(CFLAGS) $(SRV_INC) $(SRV_SRC) $(B)/libmxcore.a $(SRV_LIBS) -ljemalloc -o $@

$(B)/asan/mxgate: $(SRV_SRC) $(SRV_HDR) $(CORE_HDR) $(B)/libmxcore-san.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(SAN) $(SRV_INC) $(SRV_SRC) $(B)/libmxcore-san.a $(SRV_LIBS) -o $@

deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q $$missing >/dev/null 2>&1 || \
	  { apt-get update -q && apt-get install -y -q $$missing; }; \
	else echo "deps: all Debian packages present"; fi

$(B)/core/%.o: core/%.c $(CORE_HDR)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c $< -o $@

$(B)/san/core/%.o: core/%.c $(CORE_HDR)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(SAN) -c $< -o $@

$(B)/libmxcore.a: $(CORE_OBJ)
	ar rcs $@ $^

$(B)/libmxcore-san.a: $(CORE_SAN)
	ar rcs $@ $^

# Unit tests always build with ASan and UBSan: a parser test that cannot see
# an over-read is half a test.
$(B)/tests/test_%: tests/unit/test_%.c tests/unit/testutil.h tests/unit/guard.h $(B)/libmxcore-san.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(SAN) -Icore -Ifilters -Itests/unit $< $(B)/libmxcore-san.a $(INIH) $(CMOCKA) -o $@

# The scanner without SIMD, as it runs on a CPU that is not x86-64.
$(B)/tests/test_scan_portable: tests/unit/test_scan.c tests/unit/testutil.h tests/unit/guard.h core/scan.c $(CORE_HDR)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(SAN) -DSCAN_NO_SIMD -Icore -Itests/unit $< core/scan.c $(CMOCKA) -o $@

# test_config.c includes workers/cli.c (it has no main) to test the loader;
# test_filter.c includes the filters.
$(B)/tests/test_config: workers/cli.c workers/cli.h
$(B)/tests/test_filter: $(wildcard filters/*.c filters/*.h)

# The SPF record grammar is I/O-free and linked alone: no core/, no libspf2.
$(B)/tests/test_spf_record: tests/unit/test_spf_record.c tests/unit/guard.h workers/spfd/spf_record.c workers/spfd/spf_record.h
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(SAN) -Iworkers/spfd -Itests/unit $< workers/spfd/spf_record.c $(CMOCKA) -o $@

# A test binary that does not build is a failed test, not a stopped suite.
unit:
	@rm -f $(B)/unit.counts
	@$(MAKE) --no-print-directory -k $(UNIT_BIN) || true
	@sh tests/run-unit.sh $(UNIT_BIN)

$(B)/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(CORE_SRC) $(CORE_HDR) tests/unit/testutil.h tests/unit/guard.h tests/fuzz/fuzzutil.h
	@mkdir -p $(@D)
	$(CLANG) -std=c17 -O1 -g -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined \
	  -fno-sanitize-recover=all -Icore -Itests/unit -Itests/fuzz $< $(CORE_SRC) $(INIH) -o $@

# The SPF record check runs in the helper, on records from anyone's DNS.
$(B)/fuzz/fuzz_spfrecord: tests/fuzz/fuzz_spfrecord.c tests/unit/guard.h workers/spfd/spf_record.c workers/spfd/spf_record.h
	@mkdir -p $(@D)
	$(CLANG) -std=c17 -O1 -g -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined \
	  -fno-sanitize-recover=all -Iworkers/spfd -Itests/unit $< workers/spfd/spf_record.c -lspf2 -lresolv -lpthread -o $@

# STARTTLS's OpenSSL on memory (workers/tls.c) with the send chain it writes
# into, against an OpenSSL client in the same process; core/ for the config.
$(B)/fuzz/fuzz_tls: tests/fuzz/fuzz_tls.c tests/unit/guard.h workers/tls.c workers/tls.h workers/outq.c workers/outq.h \
		workers/lend.h $(CORE_SRC) $(CORE_HDR)
	@mkdir -p $(@D)
	$(CLANG) -std=c17 -O1 -g -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined \
	  -fno-sanitize-recover=all -Icore -Iworkers -Itests/unit $< workers/tls.c workers/outq.c $(CORE_SRC) \
	  $(INIH) -lssl -lcrypto -o $@

# make fuzz: every target for FUZZ_TIME seconds (default 10 minutes), then
# the wire fuzzer (mutated SMTP over TCP against the ASan server) as long.
fuzz: $(FUZZ_BIN) $(B)/asan/mxgate
	@for f in $(FUZZ_BIN); do n=$$(basename $$f); mkdir -p $(B)/fuzz/work-$$n; \
	  $$f -max_total_time=$(FUZZ_TIME) -print_final_stats=1 -artifact_prefix=$(B)/fuzz/ \
	    $(B)/fuzz/work-$$n tests/fuzz/corpus/$$n || exit 1; done
	@python3 tests/fuzz/wirefuzz.py --seconds $(FUZZ_TIME)

# make test's pass: each target FUZZ_TEST_TIME seconds, each its own test.
fuzz-test:
	@rm -f $(B)/fuzz.counts
	@$(MAKE) --no-print-directory -k $(FUZZ_BIN) || true
	@sh tests/run-fuzz.sh $(FUZZ_TEST_TIME) $(FUZZ_BIN)

fuzz-wire: $(B)/asan/mxgate
	@python3 tests/fuzz/wirefuzz.py --seconds $(FUZZ_TIME)

$(B)/bench/bench_core: $(BENCH_SRC) $(CORE_OBJ) $(CORE_HDR)
	@mkdir -p $(@D)
	$(CXX) -std=c++17 -O2 -g -Wall -Wextra -Werror -Icore $(BENCH_SRC) $(CORE_OBJ) \
	  -lbenchmark -lpthread $(INIH) -o $@

bench: deps $(B)/bench/bench_core
	@sh bench/run-micro.sh $(B)/bench/bench_core

# smtp-source -> mxgate -> smtp-sink against smtp-source -> smtp-sink, and
# the memory of 10 000 idle connections.
bench-e2e: deps all
	@bash bench/e2e.sh

# The same path with SPF off and on (a cached pass), in one run.
bench-spf: deps all
	@FILTER=spf bash bench/filter.sh

# The same with DNSBL lookups on (two lists, answers cached by libunbound).
bench-dnsbl: deps all
	@FILTER=dnsbl bash bench/filter.sh

# mxgate, Postfix and Haraka relaying to mxgate-load's sink, driven by
# mxgate-load, with the ceiling, in one run: JSON and PNG plots in
# build/bench-compare/ (bench/bench_compare.py; BENCH_ARGS=... adds options).
# Debian's python3, which has python3-matplotlib.
bench-compare: deps all
	@/usr/bin/python3 bench/bench_compare.py compare --out $(B)/bench-compare $(BENCH_ARGS)

# mxgate's messages/s with 1, 2, 4, ... workers up to the CPUs: build/bench-scale/.
bench-scale: deps all
	@/usr/bin/python3 bench/bench_compare.py scale --out $(B)/bench-scale $(BENCH_ARGS)

# The rate limits counted in Redis for a fleet, against counted in-process.
bench-fleet: deps all
	@FILTER=fleet bash bench/filter.sh

# The content stage (content_scanner = rspamd) on and off, rspamd's CPU apart;
# and its memory with 200 concurrent 2 MiB messages (bench/content_memory.sh).
bench-content: deps all
	@FILTER=content bash bench/filter.sh
	@bash bench/content_memory.sh

# The STARTTLS load client (smtp-source has no TLS); built for bench-tls.
$(B)/bench/tls_load: bench/tls_load.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $< -lssl -lcrypto -lpthread -o $@

# STARTTLS against plaintext sessions, handshakes, Postfix with TLS and the
# memory of idle TLS sessions, in one run (bench/tls.sh).
.PHONY: bench-tls
bench-tls: deps all $(B)/bench/tls_load
	@bash bench/tls.sh

# The container image (deploy/Dockerfile) with podman, or with docker when
# only a working docker is here. Where no registry answers, the base image is
# made with debootstrap and cached under build/image/ (deploy/README.md).
# test-image runs it against a sink: slow, not part of make test.
.PHONY: image test-image
IMAGE ?= mxgate

image:
	@if command -v podman >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then \
	  pkgs="podman runc buildah debootstrap"; else pkgs="debootstrap"; fi; \
	  $(MAKE) --no-print-directory deps DEB_PKGS="$$pkgs"
	@IMAGE=$(IMAGE) bash tests/image/build-image.sh

test-image: image
	@$(MAKE) --no-print-directory deps DEB_PKGS="postfix swaks unbound python3"
	@IMAGE=$(IMAGE) bash tests/image/test-image.sh

asan: $(B)/libmxcore-san.a $(UNIT_BIN) $(B)/asan/mxgate

test: deps
	@$(MAKE) --no-print-directory all
	@sh tests/run-all.sh

# Embedded defaults: listen 127.0.0.1:2525, deliver to ./mail/ (Maildir),
# with STARTTLS offered on a self-signed certificate made once into build/
# (swaks --tls works; a real MX needs a certificate for its name).
run: deps all $(B)/tls/cert.pem
	./$(B)/mxgate --tls may --tls-cert-file $(B)/tls/cert.pem --tls-key-file $(B)/tls/key.pem $(RUN_ARGS)

$(B)/tls/cert.pem:
	@mkdir -p $(@D)
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
	  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
	  -keyout $(B)/tls/key.pem -out $@ 2>/dev/null

clean:
	rm -rf $(B)
