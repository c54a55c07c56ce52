# bench/load/load.mk - mxgate-load, the io_uring SMTP load generator and
# fault-injecting sink (bench/load/README.md). Included by the Makefile,
# which defines B and CFLAGS; alone:
#   make -f Makefile -f bench/load/load.mk build/mxgate-load

LOAD_SRC := $(wildcard bench/load/*.c)
LOAD_HDR := $(wildcard bench/load/*.h)
LOAD_BIN := $(B)/mxgate-load

$(B)/mxgate-load: $(LOAD_SRC) $(LOAD_HDR)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LOAD_SRC) -luring -lssl -lcrypto -lpthread -lm -o $@

# The histogram's unit test (tests/unit/test_hist.c includes hist.c).
$(B)/tests/test_hist: bench/load/hist.c bench/load/hist.h
