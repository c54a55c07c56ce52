// bench_core.cc - micro-benchmarks of the I/O-free protocol core: command
// parsing cost per pipelined command, the DATA-phase scanner's throughput,
// and memchr/memcpy over the same bytes as the machine's yardsticks.
// Built and run by `make bench` (see bench/run-micro.sh).

#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

extern "C" {
#include "crc32c.h"
#include "reply.h"
#include "scan.h"
#include "slice.h"
#include "smtp.h"
}

namespace {

// ---------------------------------------------------------------- the body

constexpr size_t kBodySize = 1u << 20; // 1 MiB, end-of-data marker included

// xorshift32: the same body on every run and every machine.
struct Rng {
    uint32_t x;
    uint32_t next()
    {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        return x;
    }
    uint32_t below(uint32_t n) { return next() % n; }
};

const char *const kWords[] = {
    "the",     "message", "delivery", "server",  "account", "invoice", "meeting", "project",
    "please",  "review",  "attached", "report",  "thanks",  "regards", "update",  "schedule",
    "team",    "quarter", "results",  "budget",  "customer", "support", "request", "status",
    "about",   "with",    "from",     "will",    "would",   "could",   "should",  "today",
    "tomorrow", "Monday", "Friday",   "deadline", "draft",  "final",   "version", "changes",
    "a",       "an",      "of",       "to",      "in",      "and",     "for",     "on",
    "naïve",   "café",    "Grüße",    "über",    "100%",    "$42.50",  "(see",    "below)",
    "e-mail",  "https://example.com/x?id=7", "re:",  "fwd:",  "ok,",     "yes.",    "no;",
};
constexpr size_t kNWords = sizeof kWords / sizeof kWords[0];

// One text line of 60..78 octets (CRLF not counted), words separated by spaces.
void text_line(std::string &out, Rng &r)
{
    size_t target = 60 + r.below(19), start = out.size();
    while (out.size() - start < 60) {
        const char *w = kWords[r.below(kNWords)];
        size_t wl = strlen(w), cur = out.size() - start;
        if (cur && cur + 1 + wl > 78)
            break;
        if (cur)
            out += ' ';
        out += w;
        if (out.size() - start >= target)
            break;
    }
    while (out.size() - start < 60)
        out += '.';
    out += "\r\n";
}

void base64_block(std::string &out, Rng &r, int lines)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int i = 0; i < lines; i++) {
        for (int j = 0; j < 76; j++)
            out += b64[r.below(64)];
        out += "\r\n";
    }
}

// A realistic message in SMTP wire form: headers, text parts, base64 parts
// and a few dot-stuffed lines, exactly kBodySize octets with the final
// "\r\n.\r\n" (the CRLF before the dot being the last line's own).
std::string make_body()
{
    Rng r{0x2545f491u};
    std::string b;
    b.reserve(kBodySize + 256);
    b += "Received: from client.example.org (client.example.org [192.0.2.10])\r\n"
         "\tby mx.example.net (mxgate) with ESMTP id 4F1A2B3C4D\r\n"
         "\tfor <alice@example.com>; Mon, 23 Nov 2026 21:09:30 +0000\r\n"
         "From: Sender Name <sender@example.org>\r\n"
         "To: Alice <alice@example.com>, Bob <bob@example.com>\r\n"
         "Cc: Carol <carol@example.com>\r\n"
         "Subject: Quarterly results and the updated schedule\r\n"
         "Date: Mon, 23 Nov 2026 21:09:29 +0000\r\n"
         "Message-ID: <20261123210929.4F1A2B3C4D@client.example.org>\r\n"
         "MIME-Version: 1.0\r\n"
         "Content-Type: multipart/mixed; boundary=\"=_boundary_0042\"\r\n"
         "\r\n"
         "This is a multi-part message in MIME format.\r\n";
    // Reserve room for the closing boundary, one filler line and ".\r\n".
    const size_t tail_room = 40 + 82 + 3;
    int part = 0;
    while (b.size() + tail_room < kBodySize) {
        b += "\r\n--=_boundary_0042\r\n";
        if (part++ % 3 == 2) {
            b += "Content-Type: application/pdf; name=\"report.pdf\"\r\n"
                 "Content-Transfer-Encoding: base64\r\n\r\n";
            int lines = 100 + (int)r.below(200);
            while (lines-- > 0 && b.size() + tail_room + 78 < kBodySize)
                base64_block(b, r, 1);
        } else {
            b += "Content-Type: text/plain; charset=utf-8\r\n"
                 "Content-Transfer-Encoding: 8bit\r\n\r\n";
            int lines = 20 + (int)r.below(60);
            while (lines-- > 0 && b.size() + tail_room + 80 < kBodySize) {
                if (r.below(40) == 0)
                    b += "..like this, a line that began with a dot\r\n";
                else if (r.below(25) == 0)
                    b += "\r\n"; // paragraph break
                else
                    text_line(b, r);
            }
        }
    }
    b += "\r\n--=_boundary_0042--\r\n";
    // Pad with one last line so the total is exactly kBodySize.
    if (b.size() + 2 + 3 > kBodySize) {
        fprintf(stderr, "bench: body generator overshot\n");
        abort();
    }
    size_t pad = kBodySize - b.size() - 2 - 3;
    b.append(pad, 'x');
    b += "\r\n.\r\n";
    if (b.size() != kBodySize) {
        fprintf(stderr, "bench: body is %zu octets, not %zu\n", b.size(), kBodySize);
        abort();
    }
    return b;
}

// Built once, shared by the scan, memchr and memcpy benchmarks.
const std::string &body()
{
    static const std::string b = make_body();
    return b;
}

// --------------------------------------------------- pipelined command group

const char kGroup[] = "MAIL FROM:<sender@example.org> SIZE=4096 BODY=8BITMIME\r\n"
                      "RCPT TO:<alice@example.com>\r\n"
                      "RCPT TO:<bob@example.com>\r\n"
                      "RCPT TO:<carol@example.com>\r\n"
                      "DATA\r\n";
const char kEmptyBody[] = ".\r\n";

// Items per iteration: the 5 commands of the group plus the end of data
// (which the engine parses and answers like a command) = 6.
constexpr int kCommandsPerGroup = 6;

// Feed everything, accepting every verdict; returns the number of events,
// or -1 when the engine did not take it all (a broken state for this bench).
int feed_all(smtp_t *s, const char *p, size_t len)
{
    int events = 0;
    for (;;) {
        size_t n = 0;
        smtp_event_t ev;
        smtp_status_t st = smtp_feed(s, p, len, &n, &ev);
        p += n;
        len -= n;
        if (st == SMTP_EVENT) {
            events++;
            if (smtp_ev_wants_verdict(ev.type))
                smtp_accept(s, ev.slot);
            continue;
        }
        return st == SMTP_AGAIN && len == 0 ? events : -1;
    }
}

struct Session {
    smtp_config_t cfg;
    std::vector<char> outbuf;
    smtp_out_t out;
    smtp_t s;

    Session() : outbuf(64 * 1024)
    {
        smtp_config_defaults(&cfg, SLICE_LIT("mx.example.net"));
        out = smtp_out_t{};
        out.buf = outbuf.data();
        out.cap = outbuf.size();
        memset(&s, 0, sizeof s);
        smtp_init(&s, &cfg, &out);
        smtp_greet(&s);
    }
    ~Session() { smtp_free(&s); }
};

void BM_ParsePipelinedGroup(benchmark::State &state)
{
    Session se;
    static const char ehlo[] = "EHLO client.example.org\r\n";
    if (feed_all(&se.s, ehlo, sizeof ehlo - 1) != 1 || se.s.state != SMTP_S_HELO) {
        state.SkipWithError("EHLO was not accepted");
        return;
    }
    // One checked round outside the timing: the group must give 5 events and
    // leave the session in DATA; the empty body must end the transaction.
    se.out.len = 0;
    if (feed_all(&se.s, kGroup, sizeof kGroup - 1) != 5 || se.s.state != SMTP_S_DATA ||
        feed_all(&se.s, kEmptyBody, sizeof kEmptyBody - 1) < 1 || se.s.state != SMTP_S_HELO) {
        state.SkipWithError("the pipelined group did not run as expected");
        return;
    }
    for (auto _ : state) {
        se.out.len = 0;
        int a = feed_all(&se.s, kGroup, sizeof kGroup - 1);
        int b = feed_all(&se.s, kEmptyBody, sizeof kEmptyBody - 1);
        benchmark::DoNotOptimize(a);
        benchmark::DoNotOptimize(b);
        benchmark::DoNotOptimize(se.out.buf);
        benchmark::ClobberMemory();
    }
    if (se.s.state != SMTP_S_HELO || se.s.errors != 0)
        state.SkipWithError("the session left the HELO state during the run");
    state.SetItemsProcessed(state.iterations() * kCommandsPerGroup);
    // With kIsIterationInvariantRate | kInvert the counter is
    // seconds / (value * iterations); a value of 6e-9 per iteration makes it
    // nanoseconds per command, in the JSON as in the console (where the
    // library appends an "s" to every inverted rate: read "156.3s" as ns).
    state.counters["ns_per_command"] =
        benchmark::Counter(kCommandsPerGroup * 1e-9, benchmark::Counter::kIsIterationInvariantRate |
                                                         benchmark::Counter::kInvert);
}
BENCHMARK(BM_ParsePipelinedGroup);

// One scan of the body: the bytes forwarded; *end_at where the end was found
// (or the body's length if it was not), *errors what was latched.
size_t scan_once(const char *in, size_t len, size_t *end_at, unsigned *errors)
{
    scan_t sc;
    scan_init(&sc, 0, 1000, SCAN_BARE_REJECT);
    scan_result_t res;
    size_t off = 0, fwd = 0;
    do {
        scan_step(&sc, in + off, len - off, &res);
        off += res.consumed;
        fwd += res.body.len;
    } while (!res.end && off < len);
    *end_at = res.end ? off : len + 1;
    *errors = sc.errors;
    return fwd;
}

// The scanner over the body, with whichever SIMD layer is in use.
void scan_body(benchmark::State &state)
{
    const std::string &b = body();
    const char *in = b.data();
    const size_t len = b.size();
    size_t end_at;
    unsigned errors;
    // Checked once: the scanner must find the end exactly at the last byte,
    // with no error and the whole body (all but ".\r\n") forwarded.
    if (scan_once(in, len, &end_at, &errors) != len - 3 || end_at != len || errors) {
        state.SkipWithError("the scanner did not accept the benchmark body");
        return;
    }
    for (auto _ : state) {
        size_t fwd = scan_once(in, len, &end_at, &errors);
        benchmark::DoNotOptimize(fwd);
    }
    state.SetBytesProcessed((int64_t)state.iterations() * (int64_t)len);
    state.SetLabel(scan_impl());
}

// The layer the CPU's best: what mxgate runs, and what the ratio is of.
void BM_ScanBody(benchmark::State &state)
{
    scan_body(state);
}
BENCHMARK(BM_ScanBody);

// Each lower layer, for machines without the best one.
void BM_ScanLayer(benchmark::State &state, const char *layer)
{
    std::string best = scan_impl();
    if (!scan_use(layer)) {
        state.SkipWithError("this CPU cannot run that layer");
        return;
    }
    scan_body(state);
    scan_use(best.c_str());
}
BENCHMARK_CAPTURE(BM_ScanLayer, avx2, "avx2");
BENCHMARK_CAPTURE(BM_ScanLayer, sse2, "sse2");

void BM_Memchr(benchmark::State &state)
{
    const std::string &b = body();
    const char *in = b.data();
    const size_t len = b.size();
    if (memchr(in, 0x01, len)) {
        state.SkipWithError("the body contains 0x01");
        return;
    }
    for (auto _ : state) {
        benchmark::DoNotOptimize(in); // the compiler may not hoist the scan out
        const void *hit = memchr(in, 0x01, len);
        benchmark::DoNotOptimize(hit);
    }
    state.SetBytesProcessed((int64_t)state.iterations() * (int64_t)len);
}
BENCHMARK(BM_Memchr);

void BM_Memcpy(benchmark::State &state)
{
    const std::string &b = body();
    const size_t len = b.size();
    std::vector<char> dst(len);
    for (auto _ : state) {
        memcpy(dst.data(), b.data(), len);
        benchmark::DoNotOptimize(dst.data());
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed((int64_t)state.iterations() * (int64_t)len);
}
BENCHMARK(BM_Memcpy);

// The spool's record checksum over a message body, per layer: what a
// spooled message pays for its check (core/crc32c.c).
void BM_Crc32c(benchmark::State &state, bool portable)
{
    const std::string &b = body();
    uint32_t c = 0;
    for (auto _ : state) {
        c = portable ? crc32c_portable(c, b.data(), b.size()) : crc32c(c, b.data(), b.size());
        benchmark::DoNotOptimize(c);
    }
    state.SetBytesProcessed((int64_t)state.iterations() * (int64_t)b.size());
    state.SetLabel(portable ? "portable" : crc32c_layer());
}
BENCHMARK_CAPTURE(BM_Crc32c, best, false);
BENCHMARK_CAPTURE(BM_Crc32c, portable, true);

} // namespace

BENCHMARK_MAIN();
