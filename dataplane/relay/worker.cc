#include "dataplane/relay/worker.hh"

#include "dataplane/base/log.hh"
#include "dataplane/base/time.hh"
#include "dataplane/io/tunnel_pump.hh"
#include "dataplane/io/uring/loop.hh"
#include "dataplane/relay/routing.hh"
#include "dataplane/tunnel/mux.hh"

#include <algorithm>
#include <cstring>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>
#include <unordered_map>

namespace apprelay::relay {
namespace {
// Plaintext scratch: one produce() pass or one decrypt. 64 KiB = 4 full TLS records, so many
// small frames of different streams coalesce into full records (one SSL_write per pass).
constexpr std::size_t k_scratch = 64 * 1024;
// A user's receive is paused while this much undecrypted ciphertext is buffered (the stream has
// no credit); resumed below the low mark.
constexpr std::size_t k_user_in_high = 256 * 1024;
constexpr std::size_t k_user_in_low = 64 * 1024;
// Credit for bytes sent to a user goes back to the connector once the user's queued ciphertext
// drops below this: a user that stops reading stops its stream only.
constexpr std::size_t k_user_out_low = 64 * 1024;
// Longest idle wait when nothing is dirty and no timer is due sooner.
constexpr uint64_t k_max_wait_ns = 50'000'000;
// A loop pass that comes this long after the previous one means the worker itself did not run
// (SIGSTOP, a frozen VM, the host swapping): silence from connectors during that time is not
// theirs, so PING deadlines count from the resumption (worker::_resumed_ns).
constexpr uint64_t k_stall_ns = 1'000'000'000;
// Bytes a user sends before its stream is acknowledged are kept (up to this much) so that an OPEN
// refused by one connector can be replayed on another (DESIGN.md: an OPEN that fails before any
// byte reached the user is retried). Beyond it the user waits for OPEN_ACK.
constexpr std::size_t k_early_max = 64 * 1024;
// Free buffer chunks (64 KiB) a worker keeps when trimming the ones no stream used for 5 s.
constexpr std::size_t k_pool_keep = 16;
// Timer resolution: liveness and handshake deadlines are seconds; 10 ms ticks are plenty.
constexpr uint64_t k_timer_tick_ns = 10'000'000;
// Forwarding hop between relays (a user on a relay that holds no tunnel for the app's group):
// the user's relay sends one header line, the peer answers one line, then bytes flow both ways.
//   -> "APPRELAY-FWD/1 <app hostname> <user CN or ->\n"
//   <- "OK\n" (a stream is open on one of its tunnels) | "ERR <reason>\n" (then close)
// A forwarded stream is never forwarded again. Lines longer than this are refused.
constexpr std::size_t k_max_forward_line = 512;
constexpr std::string_view k_forward_magic = "APPRELAY-FWD/1";
// Peers tried for one user stream before the user is refused (each failed before any byte moved).
constexpr uint8_t k_max_peer_attempts = 2;
// Bytes queued towards one side of a forwarded stream before the other side stops being read.
constexpr std::size_t k_forward_high = 256 * 1024;
// The relay CA issues peers' certificates with this common-name prefix (control/relay_host.cc).
constexpr std::string_view k_peer_cn_prefix = "apprelay-peer ";

// Reads one '\n'-terminated line of the forwarding hop from a TLS session, a byte per read (the
// line is short; what follows it stays in the session for the stream). done: *line is complete
// (without '\n'); again: more bytes needed; too_long: past k_max_forward_line; ended: the peer
// closed or TLS failed before the end of the line.
enum class line_read : uint8_t { done, again, too_long, ended };
line_read read_forward_line(tls::session& s, std::string* line) {
    for (;;) {
        std::byte b;
        auto r = s.read(std::span<std::byte>(&b, 1));
        if (!r) {
            return r.code() == errc::again ? line_read::again : line_read::ended;
        }
        if (char(b) == '\n') {
            return line_read::done;
        }
        if (line->size() >= k_max_forward_line) {
            return line_read::too_long;
        }
        *line += char(b);
    }
}

// A user name for the forward header and logs: printable, no spaces, bounded.
std::string header_token(std::string_view s) {
    std::string out;
    for (char c : s.substr(0, 128)) {
        out += (c > 0x20 && c < 0x7f) ? c : '_';
    }
    return out.empty() ? std::string("-") : out;
}
} // namespace

// ---------------------------------------------------------------------------------------------
// user_conn: one user TLS connection = one stream.
// States: handshaking -> streaming (stream sid on tunnel t) -> closing (output flushed, then
// close) ; any error -> aborted (RST).
class user_conn final : public io::sink {
public:
    user_conn(worker* w, io::conn_id id, std::unique_ptr<tls::session> s, const source_key& src,
              bool src_counted)
        : _w(w), _tx(w->_loop.get(), id, std::move(s), &w->_pool), _src(src),
          _src_counted(src_counted) {
        // Slowloris bound: the TLS handshake must finish in time.
        _w->_wheel->schedule(_timer, _w->ms_from_now(_w->snap().limits.handshake_timeout_ms));
    }
    // A peer relay forwarding a user's stream: TLS is done (by the tunnel listener); the header
    // line must come within the handshake timeout.
    user_conn(worker* w, io::tls_transport&& tx)
        : _w(w), _tx(std::move(tx)), _src{}, _state(state::header), _peer_in(true) {
        _w->_wheel->schedule(_timer, _w->ms_from_now(_w->snap().limits.handshake_timeout_ms));
    }
    // Peer-in: bytes that came with the handshake may already hold the header.
    void read_header();

    void on_recv(io::conn_id, std::span<const std::byte> data) override;
    void on_recv_end(io::conn_id, int res) override;
    void on_sent(io::conn_id, int res) override;

    // tunnel side events
    void tunnel_data(std::span<const std::byte> bytes);
    void opened(); // OPEN_ACK: the connector reached the backend
    // The stream's OPEN failed before any byte reached the user: open it through another
    // connector of the group. False when the retry budget or the candidates are exhausted.
    bool retry(std::string_view failed_connector, std::string_view why);
    bool acked() const { return _acked; }
    // False with *why (for the log line) when the app's access rule refuses this user.
    bool user_allowed(const app_entry& app, std::string* why) const;
    void tunnel_fin();
    void stream_closed();
    void abort(relay_counter why);
    // The user's connection broke (TCP reset, send failure, TLS error): the stream ends with
    // RST, unless the backend had already finished (its FIN came and every byte was handed to
    // the user's session): then the user reset a finished exchange, the way clients close with
    // our close_notify unread, and the backend gets FIN.
    void user_gone();
    std::size_t pull(std::span<std::byte> dst);

    // Forwarded to a peer relay (peer_link): the link's events.
    void peer_failed(std::string_view node, std::string_view why); // before any byte moved
    void peer_data(std::span<const std::byte> bytes);    // from the peer to the user
    void peer_fin();                                     // the peer's close_notify
    void peer_done();                                    // both directions finished
    void peer_cut(std::string_view why);                 // the peer broke mid-stream
    // Plaintext from the user for the peer: bytes, 0 = nothing now, closed = the user finished.
    result<std::size_t> read_user(std::span<std::byte> dst);
    std::size_t user_queued() const { return _tx.queued(); }

    bool handshaking() const { return _state == state::handshaking || _state == state::header; }
    std::size_t pos = 0; // index in worker::_users

private:
    enum class state : uint8_t { handshaking, header, streaming, closing, dead };
    void handshake();
    void start_stream();
    // No tunnel here for the app's group: carry the stream to a peer relay that holds one (never
    // for a stream that was itself forwarded). False = no peer left to try.
    bool forward();
    // Peer-in: the answer line to the forwarding relay; ERR ends the connection cleanly.
    void refuse_peer(std::string_view why);
    void maybe_return_credit();
    void maybe_finish_close();
    void queue_fin();
    // [limits] idle_timeout_ms: the stream is cut when no byte moved either way for that long
    // (a user that went quiet, or one that stopped reading); otherwise the timer is re-armed.
    void idle_check();
    void touch() { _last_active = _w->_now; }
    // [limits] user_buffer_budget_mb: what this connection holds on its user's behalf (TLS
    // output towards the user, input not yet carried on) enters the worker's sum. Called on the
    // way out of every event that moves bytes (held_update); a dead connection holds nothing.
    void account() {
        if (_state == state::dead) {
            return;
        }
        const std::size_t now = _tx.queued() + _tx.tls().buffered_input() + _early.size();
        _w->_user_buffered = _w->_user_buffered + now - _held;
        _held = now;
    }
    struct held_update {
        user_conn* u;
        ~held_update() { u->account(); }
    };
    // Reads resume once the session's undecrypted input is drained (or below the low mark).
    void maybe_resume_recv(bool drained) {
        if (_recv_paused && (drained || _tx.tls().buffered_input() < k_user_in_low)) {
            _recv_paused = false;
            _w->_loop->start_recv(_tx.id());
        }
    }
    void close_now(bool abort);
    // This user aborted (reset mid-exchange, failed or abandoned handshake): its source pays.
    void charge_abort() {
        if (_peer_in) {
            return; // a peer relay is not a user source: its users were charged there
        }
        _w->_counters.add(relay_counter::user_aborts_charged);
        _w->_sources.charge_abort(_src, _w->_now);
    }

    static void on_timer(core::timer*, void* ctx) {
        auto* u = static_cast<user_conn*>(ctx);
        if (u->_state == state::handshaking) {
            u->charge_abort();
            u->abort(relay_counter::user_handshake_timeouts);
        } else if (u->_state == state::header) {
            u->_w->_counters.add(relay_counter::peer_in_refused);
            log::info("peer_in_refused",
                      {{"worker", u->_w->_index}, {"reason", "no forward header in time"}});
            u->close_now(true);
        } else if (u->_state == state::streaming || u->_state == state::closing) {
            u->idle_check();
        }
    }

    worker* _w;
    io::tls_transport _tx;
    core::timer _timer{&user_conn::on_timer, this};
    source_key _src;
    bool _src_counted = false; // holds one of its source's source_max_connections
    uint64_t _last_active = 0; // a byte moved (received from or sent to the user)
    std::size_t _held = 0;     // bytes in worker::_user_buffered on this connection's behalf
    uint32_t _idle_ms = 0;     // the app's idle_timeout_ms; 0 = [limits] idle_timeout_ms
    state _state = state::handshaking;
    tunnel_conn* _t = nullptr;
    uint32_t _sid = 0;
    uint64_t _unacked = 0;       // bytes from the tunnel not yet credited back
    bool _eof_from_user = false; // close_notify or TCP FIN: FIN owed to the tunnel
    bool _fin_queued = false;    // ... and handed to the tunnel (only once acked)
    bool _acked = false;
    uint8_t _attempts = 0;
    std::string _app_host;           // lowercase SNI: the app is looked up again on retry
    std::vector<std::string> _tried; // connectors whose OPEN failed
    std::vector<std::byte> _early;   // user bytes sent before OPEN_ACK (replayed on retry)
    std::size_t _replay = 0;         // bytes of _early already given to the current stream
    bool _fin_from_tunnel = false;
    bool _stream_done = false;
    bool _recv_paused = false;
    // Forwarding hop. On the user's relay: the link to the peer carrying this stream, and the
    // peers already tried. On the peer: _peer_in (never forward again) and its header line.
    bool _peer_in = false;
    peer_link* _p = nullptr;
    uint8_t _peer_attempts = 0;
    std::vector<uint32_t> _peers_tried;
    std::string _header;
    std::string _forward_user; // peer-in: the user named by the forwarding relay (logs)
};

// ---------------------------------------------------------------------------------------------
// peer_link: the user's relay's connection to a peer relay carrying one forwarded user stream
// (mutual TLS, certificates from the relay CA). States: connecting -> handshaking -> awaiting_ok
// (header sent) -> streaming -> done; any failure before OK lets the user try another peer.
class peer_link final : public io::sink {
public:
    peer_link(worker* w, user_conn* u, std::string node, std::string header)
        : _w(w), _u(u), _node(std::move(node)), _header(std::move(header)) {}

    bool start(const peer_relay& peer, std::string* why);
    void on_connect(io::conn_id, int res) override;
    void on_recv(io::conn_id, std::span<const std::byte> data) override;
    void on_recv_end(io::conn_id, int res) override;
    void on_sent(io::conn_id, int res) override;

    // User side: bytes or EOF to carry up; room to carry more down; the user is gone.
    void pump_up();
    void pump_down();
    void user_eof_clean(); // the user finished after the response: close_notify, not a reset
    void drop(); // the user's side ends the link with a reset (no more calls to the user)
    bool streaming() const { return _state == state::streaming; }
    const std::string& node() const { return _node; }
    std::size_t pos = 0; // index in worker::_links

private:
    enum class state : uint8_t { connecting, handshaking, awaiting_ok, streaming, dead };
    static void on_timer(core::timer*, void* ctx) {
        auto* p = static_cast<peer_link*>(ctx);
        if (p->_state == state::streaming && p->_u == nullptr) {
            p->_state = state::dead; // lingering after the user left: done waiting
            p->close_link(true);
        } else if (p->_state != state::streaming && p->_state != state::dead) {
            p->fail("peer did not answer in time");
        }
    }
    void read_reply();
    void fail(std::string_view why); // before OK: the user may try another peer
    void cut(std::string_view why);  // after OK: the stream is cut (RST to the user)
    void maybe_finish();
    void close_link(bool abort);

    worker* _w;
    user_conn* _u;
    std::string _node;
    std::string _header;
    std::string _reply;
    io::conn_id _id{};
    std::unique_ptr<io::tls_transport> _tx;
    core::timer _timer{&peer_link::on_timer, this};
    state _state = state::connecting;
    bool _up_done = false;   // close_notify sent to the peer
    bool _down_done = false; // the peer's close_notify received
    bool _peer_eof = false;  // the peer's TCP end came (records may still be buffered)
    bool _recv_paused = false;
};

// ---------------------------------------------------------------------------------------------
// tunnel_conn: one connector tunnel (mutual TLS) carrying many streams.
// States: handshaking -> await_hello -> (handing_off -> moved to another worker) -> ready ->
// closed. Identity (connector, tenant, group) comes from the verified certificate + snapshot only.
class tunnel_conn final : public io::sink, public tunnel::mux_handler {
public:
    tunnel_conn(worker* w, io::conn_id id, std::unique_ptr<tls::session> s);

    void on_recv(io::conn_id, std::span<const std::byte> data) override;
    void on_recv_end(io::conn_id, int res) override;
    void on_sent(io::conn_id, int res) override;
    void on_detached(io::conn_id, int fd) override;

    // mux_handler
    void on_hello(const tunnel::hello& h) override;
    void on_open_ack(uint32_t sid) override;
    void on_open_fail(uint32_t sid, tunnel::reason r, std::string_view msg) override;
    void on_data(uint32_t sid, std::span<const std::byte> bytes) override;
    void on_fin(uint32_t sid) override;
    void on_reset(uint32_t sid, tunnel::reason r, std::string_view msg) override;
    void on_stream_closed(uint32_t sid) override;
    void on_goaway(uint32_t last, tunnel::reason r, std::string_view msg) override;
    std::size_t pull(uint32_t sid, std::span<std::byte> dst) override;

    // errc::overloaded when [limits] max_pending_opens OPENs are unanswered on this tunnel.
    result<uint32_t> open_stream(user_conn* u, const app_entry& app);
    // Removes a stream, keeping the count of unanswered OPENs.
    void erase_stream(std::unordered_map<uint32_t, user_conn*>::iterator it);
    void forget_stream(uint32_t sid, bool reset);
    // The user is gone but lost nothing: FIN (not RST) ends the stream towards the backend.
    void forget_stream_with_fin(uint32_t sid) {
        auto it = _streams.find(sid);
        if (it != _streams.end()) {
            erase_stream(it);
            finish_stream(sid);
        }
    }
    void finish_stream(uint32_t sid) {
        _pending.fin.push_back(sid);
        _w->mark_dirty(this);
    }
    void service();
    void adopt_on(worker* w, io::conn_id id);
    void fail(relay_counter counter, std::string_view why);
    void goaway(tunnel::reason code, std::string_view why);
    // A new snapshot is in place: re-resolve identity; close if revoked, drain if moved, and send
    // the connector its new CONFIG.
    void reconfigure();
    bool routed = false; // in worker::_by_group (ready and not draining)

    bool ready() const { return _state == state::ready; }
    const std::string& connector_id() const { return _connector_id; }
    const std::string& version() const { return _version; }
    // Relay stopping: GOAWAY now, no new streams here, streams in flight go on.
    void drain();
    bool drained() const { return _state == state::draining && _streams.empty() && _tx.idle(); }
    uint16_t handoff_target() const { return _target_worker; }
    std::size_t stream_count() const { return _streams.size(); }
    uint32_t group() const { return _group; }
    int32_t connector() const { return _connector; }
    tunnel::mux& mux() { return _mux; }
    bool dirty = false;
    std::size_t pos = 0; // index in worker::_tunnels

private:
    enum class state : uint8_t { handshaking, await_hello, handing_off, ready, draining, closed };
    // One timer per tunnel: the handshake/HELLO deadline until ready, then the PING clock.
    static void on_timer(core::timer*, void* ctx) { static_cast<tunnel_conn*>(ctx)->tick(); }
    void tick();
    void after_handshake();
    // False (nothing sent) when the connector already has max_tunnels_per_connector here.
    bool send_hello_ack();
    void send_config(bool force);
    void drain_with(tunnel::reason code, std::string_view why);
    void close_all_streams();

    worker* _w;
    io::tls_transport _tx;
    tunnel::mux _mux;
    core::timer _timer{&tunnel_conn::on_timer, this};
    uint64_t _last_rx = 0; // last bytes from the connector (PONGs at least, when healthy)
    state _state = state::handshaking;
    // Identity: from the verified certificate; the indices below are into the current snapshot
    // and re-resolved by reconfigure() whenever a new one is applied.
    std::string _fingerprint;
    std::string _connector_id;
    std::string _group_key;   // "tenant/group", for logs
    uint64_t _group_id = 0;   // the store's group id: a change means the connector was moved
    std::string _version;     // from HELLO
    std::string _config_sent; // last CONFIG body sent
    uint64_t _config_sent_ns = 0;
    int32_t _connector = -1;
    uint32_t _group = 0;
    uint16_t _target_worker = 0;
    tunnel::reason _violation_reason = tunnel::reason::protocol_error;
    std::unordered_map<uint32_t, user_conn*> _streams;
    uint32_t _unacked = 0; // streams of _streams whose OPEN is not answered yet
    io::tunnel_pending _pending{{}, {}, "user connection closed"};
    bool _handoff_pending = false;
    bool _peer_draining = false; // the connector sent GOAWAY while routed: `drained` on close
    std::string _violation; // protocol violation seen inside a mux callback
};

// ----------------------------------------------------------------------------- user_conn impl

void user_conn::queue_fin() {
    _eof_from_user = true;
    // FIN waits for OPEN_ACK and for the replay of early bytes: it must follow every byte.
    if (!_fin_queued && _t != nullptr && _acked && _replay == _early.size()) {
        _fin_queued = true;
        _t->finish_stream(_sid);
    }
}

void user_conn::opened() {
    _acked = true;
    if (_replay == _early.size()) {
        std::vector<std::byte>().swap(_early);
        _replay = 0;
    }
    if (_eof_from_user) {
        queue_fin();
    }
    if (_t != nullptr) {
        _t->mux().mark_readable(_sid);
        _w->mark_dirty(_t);
    }
}

bool user_conn::user_allowed(const app_entry& app, std::string* why) const {
    // A certificate verified against this app's tenant CA, carrying one of the allowed groups
    // (subject OU). A certificate from another tenant (another forest) never qualifies.
    const auto& tenant = _w->snap().tenants[app.tenant];
    if (std::string problem = _tx.tls().peer_certificate_problem(); !problem.empty()) {
        *why = "user certificate: " + problem; // none, expired, not yet valid, unknown CA...
        return false;
    }
    if (_tx.tls().peer_root_fingerprint() != tenant.ca_fingerprint) {
        *why = "user certificate not issued by the app's tenant CA";
        return false;
    }
    for (const auto& ou : _tx.tls().peer_organizational_units()) {
        for (const auto& g : app.allowed_user_groups) {
            if (ou == g) {
                return true;
            }
        }
    }
    *why = "user not in an allowed group";
    return false;
}

bool user_conn::retry(std::string_view failed_connector, std::string_view why) {
    _t = nullptr;
    const auto& snap = _w->snap();
    if (_acked || _state != state::streaming || _attempts >= snap.limits.open_retries) {
        return false;
    }
    auto found = snap.app_by_hostname.find(_app_host);
    if (found == snap.app_by_hostname.end()) {
        return false;
    }
    const app_entry& app = snap.apps[found->second];
    _tried.emplace_back(failed_connector);
    tunnel_conn* t = _w->pick_tunnel(app.group, &_tried);
    if (t == nullptr) {
        return false;
    }
    auto sid = t->open_stream(this, app);
    if (!sid) {
        return false;
    }
    ++_attempts;
    _w->_counters.add(relay_counter::streams_retried);
    log::info("stream_retried", {{"worker", _w->_index},
                                 {"app", app.name},
                                 {"failed_connector", failed_connector},
                                 {"reason", why},
                                 {"to", t->connector_id()},
                                 {"replay_bytes", _early.size()}});
    _t = t;
    _sid = *sid;
    _replay = 0;
    t->mux().mark_readable(_sid);
    _w->mark_dirty(t);
    return true;
}

void user_conn::on_recv(io::conn_id, std::span<const std::byte> data) {
    if (_state == state::dead || _state == state::closing) {
        return;
    }
    held_update held{this};
    _tx.tls().feed(data);
    if (_state == state::handshaking) {
        handshake();
        return;
    }
    if (_state == state::header) {
        read_header();
        return;
    }
    touch();
    if (_t != nullptr) {
        _t->mux().mark_readable(_sid);
        _w->mark_dirty(_t);
    }
    if (_p != nullptr && _p->streaming()) {
        _p->pump_up();
        if (_state == state::dead) {
            return;
        }
    }
    if (!_recv_paused && _tx.tls().buffered_input() > k_user_in_high) {
        _recv_paused = true;
        _w->_counters.add(relay_counter::user_recv_paused);
        _w->_loop->pause_recv(_tx.id());
    }
}

void user_conn::handshake() {
    auto r = _tx.tls().handshake();
    _tx.flush();
    if (r.code() == errc::again) {
        return;
    }
    if (!r) {
        if (r.code() == errc::unknown_app) {
            _w->_counters.add(relay_counter::user_unknown_sni);
            log::info("user_refused", {{"worker", _w->_index},
                                       {"reason", "unknown application"},
                                       {"sni", _tx.tls().sni()}});
        } else {
            _w->_counters.add(relay_counter::user_tls_failed);
            log::info("user_tls_failed",
                      {{"worker", _w->_index}, {"reason", _tx.tls().last_error()}});
            charge_abort();
        }
        // Let the alert go out, then close.
        _state = state::closing;
        maybe_finish_close();
        return;
    }
    start_stream();
}

void user_conn::read_header() {
    switch (read_forward_line(_tx.tls(), &_header)) {
    case line_read::done:
        break;
    case line_read::again:
        return;
    case line_read::too_long:
        refuse_peer("header line too long");
        return;
    case line_read::ended:
        _w->_counters.add(relay_counter::peer_in_refused);
        log::info("peer_in_refused",
                  {{"worker", _w->_index}, {"reason", "peer closed before its header"}});
        close_now(true);
        return;
    }
    // "APPRELAY-FWD/1 <hostname> <user>"
    std::string_view h = _header;
    auto sp1 = h.find(' ');
    auto sp2 = sp1 == std::string_view::npos ? sp1 : h.find(' ', sp1 + 1);
    if (sp1 == std::string_view::npos || sp2 == std::string_view::npos ||
        h.substr(0, sp1) != k_forward_magic || sp2 == sp1 + 1 ||
        h.find(' ', sp2 + 1) != std::string_view::npos || sp2 + 1 == h.size()) {
        refuse_peer("malformed header");
        return;
    }
    _forward_user = std::string(h.substr(sp2 + 1));
    _header.resize(sp2);
    _header.erase(0, sp1 + 1); // the hostname
    _state = state::streaming;
    start_stream();
}

void user_conn::refuse_peer(std::string_view why) {
    _w->_wheel->cancel(_timer);
    _w->_counters.add(relay_counter::peer_in_refused);
    log::info("peer_in_refused", {{"worker", _w->_index},
                                  {"app", header_token(std::string_view(_header).substr(0, 64))},
                                  {"reason", why}});
    std::string line = "ERR " + std::string(why) + "\n";
    (void)_tx.tls().write(std::as_bytes(std::span(line.data(), line.size())));
    _tx.tls().shutdown();
    _tx.flush();
    _state = state::closing;
    maybe_finish_close();
}

void user_conn::start_stream() {
    const auto& snap = _w->snap();
    // From here on the timer watches for an idle stream (close_now cancels it).
    touch();
    _w->_wheel->schedule(_timer, _w->ms_from_now(snap.limits.idle_timeout_ms));
    // By name in the current snapshot, not by the index the TLS context was built with: the
    // configuration may have changed during the handshake (the app deleted or moved). A peer
    // relay names the app in its header.
    const std::string_view name = _peer_in ? std::string_view(_header) : _tx.tls().sni();
    const app_route* found = find_app(snap, name);
    if (found == nullptr) {
        if (_peer_in) {
            refuse_peer("unknown application");
            return;
        }
        _w->_counters.add(relay_counter::user_unknown_sni);
        log::info(
            "user_refused",
            {{"worker", _w->_index}, {"reason", "unknown application"}, {"sni", _tx.tls().sni()}});
        close_now(true);
        return;
    }
    const app_entry& app = snap.apps[found->second];
    _app_host = found->first;
    _idle_ms = app.idle_timeout_ms; // the app's own limit, taken when its stream starts
    if (_idle_ms != 0) {
        _w->_wheel->schedule(_timer, _w->ms_from_now(_idle_ms));
    }
    // Authorization stays on the user's relay: a forwarded stream was allowed there.
    if (std::string why; !_peer_in && app.user_cert_required && !user_allowed(app, &why)) {
        _w->_counters.add(relay_counter::streams_failed_not_allowed);
        log::info("user_refused", {{"worker", _w->_index},
                                   {"app", app.name},
                                   {"user", _tx.tls().peer_common_name()},
                                   {"reason", "not allowed"},
                                   {"detail", why}});
        close_now(true);
        return;
    }
    tunnel_conn* t = _w->pick_tunnel(app.group, nullptr);
    auto sid = t != nullptr ? t->open_stream(this, app) : result<uint32_t>(0u);
    // A tunnel whose open/reset budget is spent (M20) or that is full refuses new streams
    // only: another tunnel of the group takes this one.
    for (std::vector<std::string> full; t != nullptr && !sid;) {
        full.emplace_back(t->connector_id());
        tunnel_conn* next = _w->pick_tunnel(app.group, &full);
        if (next == nullptr) {
            break;
        }
        t = next;
        sid = t->open_stream(this, app);
    }
    if (t == nullptr) {
        if (_peer_in) {
            _w->_counters.add(relay_counter::streams_failed_no_connector);
            refuse_peer("no connector available");
            return;
        }
        _state = state::streaming;
        if (_w->_cfg->peer_tls != nullptr && !snap.groups[app.group].peers.empty()) {
            (void)forward(); // false: it refused the user (no peer could be reached)
            return;
        }
        _w->_counters.add(relay_counter::streams_failed_no_connector);
        log::info("stream_refused", {{"worker", _w->_index},
                                     {"app", app.name},
                                     {"group", snap.groups[app.group].name},
                                     {"reason", "no connector available"}});
        close_now(true);
        return;
    }
    if (!sid) {
        _w->_counters.add(relay_counter::streams_failed_limit);
        if (_peer_in) {
            refuse_peer(to_string(sid.code()));
            return;
        }
        log::info("stream_refused",
                  {{"worker", _w->_index}, {"app", app.name}, {"reason", to_string(sid.code())}});
        close_now(true);
        return;
    }
    _t = t;
    _sid = *sid;
    _state = state::streaming;
    _w->_counters.add(relay_counter::streams_opened);
    if (_peer_in) {
        // The forwarding relay starts carrying the user's bytes once it reads this line; the
        // backend's bytes follow it in the same TLS stream.
        _w->_counters.add(relay_counter::streams_forwarded_in);
        static constexpr std::string_view ok = "OK\n";
        (void)_tx.tls().write(std::as_bytes(std::span(ok.data(), ok.size())));
        _tx.flush();
        log::debug("stream_forwarded_in",
                   {{"worker", _w->_index}, {"app", app.name}, {"user", _forward_user}});
    }
    // Bytes may have arrived with the handshake (pipelined first request).
    t->mux().mark_readable(_sid);
    _w->mark_dirty(t);
}

std::size_t user_conn::pull(std::span<std::byte> dst) {
    if (_state != state::streaming) {
        return 0;
    }
    held_update held{this};
    if (_replay < _early.size()) { // a retried stream first gets what the failed one got
        std::size_t n = std::min(dst.size(), _early.size() - _replay);
        std::memcpy(dst.data(), _early.data() + _replay, n);
        _replay += n;
        if (_replay == _early.size() && _acked) {
            std::vector<std::byte>().swap(_early);
            _replay = 0;
            if (_eof_from_user) {
                queue_fin();
            }
        }
        return n;
    }
    if (!_acked) {
        if (_early.size() >= k_early_max) {
            return 0; // the rest waits for OPEN_ACK
        }
        dst = dst.first(std::min(dst.size(), k_early_max - _early.size()));
    }
    auto r = _tx.tls().read(dst);
    if (r) {
        if (!_acked) {
            _early.insert(_early.end(), dst.begin(), dst.begin() + long(*r));
            _replay = _early.size();
        }
        _w->_counters.add(relay_counter::bytes_user_to_backend, *r);
        maybe_resume_recv(false);
        return *r;
    }
    if (r.code() == errc::again) {
        maybe_resume_recv(true);
        return 0;
    }
    if (r.code() == errc::closed) {
        queue_fin();
        return 0;
    }
    // TLS failure mid-stream: the stream is cut, the tunnel must say so (RST, never FIN).
    log::info("user_tls_failed", {{"worker", _w->_index}, {"reason", _tx.tls().last_error()}});
    _w->_counters.add(relay_counter::user_tls_failed);
    _eof_from_user = true;
    if (_t != nullptr) {
        _t->forget_stream(_sid, true);
        _t = nullptr;
    }
    close_now(true);
    return 0;
}

void user_conn::on_recv_end(io::conn_id, int res) {
    if (_state == state::dead) {
        return;
    }
    if (_state == state::handshaking) {
        _w->_counters.add(relay_counter::user_tls_failed);
        charge_abort();
        close_now(true);
        return;
    }
    if (_state == state::header) {
        _w->_counters.add(relay_counter::peer_in_refused);
        close_now(true);
        return;
    }
    if (res == 0 && _state == state::streaming) {
        // TCP FIN from the user: half-close. Whatever is still buffered is pulled first, then
        // FIN goes to the tunnel.
        // Records still buffered in the session are pulled before the FIN (mux::finish orders it).
        if (_t != nullptr) {
            _t->mux().mark_readable(_sid);
        }
        queue_fin();
        if (_p != nullptr && _p->streaming()) {
            _p->pump_up(); // the rest, then close_notify to the peer
        }
        return;
    }
    user_gone();
}

void user_conn::tunnel_data(std::span<const std::byte> bytes) {
    if (_state != state::streaming) {
        return;
    }
    held_update held{this};
    auto r = _tx.tls().write(bytes);
    if (!r) {
        if (_t != nullptr) {
            _t->forget_stream(_sid, true);
            _t = nullptr;
        }
        close_now(true);
        return;
    }
    _w->_counters.add(relay_counter::bytes_backend_to_user, bytes.size());
    _unacked += bytes.size();
    _tx.flush();
    maybe_return_credit();
}

void user_conn::maybe_return_credit() {
    if (_unacked > 0 && _t != nullptr && _tx.queued() < k_user_out_low) {
        _t->mux().consumed(_sid, _unacked);
        _unacked = 0;
        _w->mark_dirty(_t);
    }
}

void user_conn::tunnel_fin() {
    log::debug("stream_fin_from_connector", {{"worker", _w->_index}, {"sid", _sid}});
    _fin_from_tunnel = true;
    _tx.tls().shutdown();
    _tx.flush();
    maybe_finish_close();
}

void user_conn::stream_closed() {
    _stream_done = true;
    _t = nullptr;
    _w->_counters.add(relay_counter::streams_closed);
    _state = state::closing;
    maybe_finish_close();
}

void user_conn::user_gone() {
    if (_p != nullptr) {
        peer_link* p = _p;
        _p = nullptr;
        if (_fin_from_tunnel) {
            _w->_counters.add(relay_counter::streams_user_closed_after_response);
            p->user_eof_clean();
        } else {
            _w->_counters.add(relay_counter::streams_user_aborted);
            p->drop();
            charge_abort();
        }
    }
    if (_t != nullptr) {
        if (_fin_from_tunnel) {
            _w->_counters.add(relay_counter::streams_user_closed_after_response);
            _t->forget_stream_with_fin(_sid);
        } else {
            _w->_counters.add(relay_counter::streams_user_aborted);
            _t->forget_stream(_sid, true);
            charge_abort();
        }
        _t = nullptr;
    }
    close_now(true);
}

void user_conn::abort(relay_counter why) {
    _w->_counters.add(why);
    _t = nullptr;
    close_now(true);
}

void user_conn::on_sent(io::conn_id, int res) {
    if (_state == state::dead) {
        return;
    }
    _w->_counters.add(relay_counter::user_sends);
    held_update held{this};
    if (!_tx.on_sent(res)) {
        user_gone();
        return;
    }
    touch();
    maybe_return_credit();
    if (_p != nullptr && _p->streaming()) {
        _p->pump_down();
        if (_state == state::dead) {
            return;
        }
    }
    maybe_finish_close();
}

void user_conn::maybe_finish_close() {
    if (_state == state::closing && _tx.idle()) {
        close_now(false);
    }
}

void user_conn::close_now(bool abort) {
    if (_state == state::dead) {
        return;
    }
    _state = state::dead;
    _w->_user_buffered -= _held;
    _held = 0;
    _w->_wheel->cancel(_timer);
    if (_src_counted) {
        _src_counted = false;
        _w->_sources.release(_src);
    }
    if (_p != nullptr) {
        peer_link* p = _p;
        _p = nullptr;
        p->drop();
    }
    _w->_loop->close(_tx.id(), abort);
    _w->bury(this);
}


void user_conn::idle_check() {
    const uint64_t idle_ns =
        uint64_t(_idle_ms != 0 ? _idle_ms : _w->snap().limits.idle_timeout_ms) * 1'000'000ull;
    if (_w->_now - _last_active < idle_ns) {
        _w->_wheel->schedule(_timer, _last_active + idle_ns);
        return;
    }
    _w->_counters.add(relay_counter::streams_idle_timeout);
    _w->idle_cut(_app_host, idle_ns / 1'000'000);
    if (_t != nullptr) {
        _t->forget_stream(_sid, true); // RST: the backend must not take it for a clean end
        _t = nullptr;
    }
    close_now(true); // a forwarded stream's link is reset with it
}

// ------------------------------------------------------------------ forwarding hop, user side

bool user_conn::forward() {
    const auto& snap = _w->snap();
    auto found = snap.app_by_hostname.find(_app_host);
    while (found != snap.app_by_hostname.end() && _peer_attempts < k_max_peer_attempts) {
        const app_entry& app = snap.apps[found->second];
        std::vector<uint32_t> left;
        for (uint32_t i : snap.groups[app.group].peers) {
            if (std::find(_peers_tried.begin(), _peers_tried.end(), i) == _peers_tried.end()) {
                left.push_back(i);
            }
        }
        if (left.empty()) {
            break;
        }
        const uint32_t pick = left[next_random(_w->_rng) % left.size()];
        _peers_tried.push_back(pick);
        ++_peer_attempts;
        const peer_relay& peer = snap.peers[pick];
        std::string header = std::string(k_forward_magic) + " " + _app_host + " " +
                             header_token(_tx.tls().peer_common_name()) + "\n";
        auto* link = new peer_link(_w, this, peer.node, std::move(header));
        link->pos = _w->_links.size();
        _w->_links.push_back(link);
        std::string why;
        if (link->start(peer, &why)) {
            _p = link;
            return true;
        }
        _w->_counters.add(relay_counter::peer_link_failures);
        log::info("peer_link_failed", {{"worker", _w->_index}, {"peer", peer.node}, {"reason", why}});
        _w->bury(link);
    }
    _w->_counters.add(relay_counter::streams_failed_no_peer);
    log::info("stream_refused", {{"worker", _w->_index},
                                 {"app", _app_host},
                                 {"reason", "no connector on this relay and no peer relay "
                                            "reachable"},
                                 {"peers_tried", _peer_attempts}});
    close_now(true);
    return false;
}

void user_conn::peer_failed(std::string_view, std::string_view) {
    _p = nullptr;
    if (_state == state::streaming) {
        (void)forward(); // another peer, or the refusal
    }
}

result<std::size_t> user_conn::read_user(std::span<std::byte> dst) {
    held_update held{this};
    auto r = _tx.tls().read(dst);
    if (r) {
        _w->_counters.add(relay_counter::bytes_user_to_backend, *r);
        maybe_resume_recv(false);
        return *r;
    }
    if (r.code() == errc::again) {
        if (_eof_from_user) {
            return error(errc::closed, "user finished");
        }
        maybe_resume_recv(true);
        return std::size_t(0);
    }
    if (r.code() == errc::closed) {
        _eof_from_user = true;
        return error(errc::closed, "user finished");
    }
    log::info("user_tls_failed", {{"worker", _w->_index}, {"reason", _tx.tls().last_error()}});
    _w->_counters.add(relay_counter::user_tls_failed);
    close_now(true); // drops the link: the peer sees a reset
    return error(errc::tls_error, "user TLS failed");
}

void user_conn::peer_data(std::span<const std::byte> bytes) {
    if (_state != state::streaming) {
        return;
    }
    held_update held{this};
    if (!_tx.tls().write(bytes)) {
        close_now(true);
        return;
    }
    _w->_counters.add(relay_counter::bytes_backend_to_user, bytes.size());
    _tx.flush();
}

void user_conn::peer_fin() {
    _fin_from_tunnel = true;
    _tx.tls().shutdown();
    _tx.flush();
}

void user_conn::peer_done() {
    _p = nullptr;
    _w->_counters.add(relay_counter::streams_closed);
    _state = state::closing;
    maybe_finish_close();
}

void user_conn::peer_cut(std::string_view) {
    _p = nullptr;
    abort(relay_counter::streams_reset);
}

// ---------------------------------------------------------------------------- peer_link impl

bool peer_link::start(const peer_relay& peer, std::string* why) {
    auto id = _w->_loop->connect(reinterpret_cast<const sockaddr*>(&peer.addr), peer.addr_len,
                                 this);
    if (!id) {
        *why = "connect: " + std::string(id.err().detail);
        return false;
    }
    _id = *id;
    _tx = std::make_unique<io::tls_transport>(_w->_loop.get(), _id,
                                              _w->_cfg->peer_tls->new_session(), &_w->_pool);
    _w->_wheel->schedule(_timer, _w->ms_from_now(_w->snap().limits.handshake_timeout_ms));
    return true;
}

void peer_link::on_connect(io::conn_id, int res) {
    if (_state != state::connecting) {
        return;
    }
    if (res < 0) {
        fail("connect: " + std::string(std::strerror(-res)));
        return;
    }
    _state = state::handshaking;
    _w->_loop->start_recv(_id);
    (void)_tx->tls().handshake(); // the ClientHello
    _tx->flush();
}

void peer_link::on_recv(io::conn_id, std::span<const std::byte> data) {
    if (_state == state::dead || _state == state::connecting) {
        return;
    }
    _tx->tls().feed(data);
    if (_state == state::handshaking) {
        auto r = _tx->tls().handshake();
        _tx->flush();
        if (r.code() == errc::again) {
            return;
        }
        if (!r) {
            fail("TLS: " + _tx->tls().last_error());
            return;
        }
        if (!_tx->tls().write(std::as_bytes(std::span(_header.data(), _header.size())))) {
            fail("TLS write failed");
            return;
        }
        _tx->flush();
        _state = state::awaiting_ok;
    }
    if (_state == state::awaiting_ok) {
        read_reply();
    }
    if (_state == state::streaming) {
        pump_down();
        if (_state == state::streaming && !_recv_paused &&
            _tx->tls().buffered_input() > k_user_in_high) {
            _recv_paused = true;
            _w->_loop->pause_recv(_id);
        }
    }
}

void peer_link::read_reply() {
    switch (read_forward_line(_tx->tls(), &_reply)) {
    case line_read::done:
        break;
    case line_read::again:
        return;
    case line_read::too_long:
        fail("answer line too long");
        return;
    case line_read::ended:
        fail("peer closed before answering: " + _tx->tls().last_error());
        return;
    }
    if (_reply != "OK") {
        fail(_reply.rfind("ERR ", 0) == 0 ? "peer refused: " + _reply.substr(4)
                                          : "bad answer from peer");
        return;
    }
    _w->_wheel->cancel(_timer);
    _state = state::streaming;
    _w->_counters.add(relay_counter::streams_forwarded);
    log::debug("stream_forwarded", {{"worker", _w->_index}, {"peer", _node}});
    pump_up();
}

void peer_link::pump_up() {
    if (_state != state::streaming || _u == nullptr || _up_done) {
        return;
    }
    auto& scratch = _w->_scratch;
    while (_tx->queued() < k_forward_high) {
        auto r = _u->read_user(std::span<std::byte>(scratch.data(), scratch.size()));
        if (!r) {
            if (r.code() != errc::closed) {
                return; // the user's TLS failed: it closed and dropped this link
            }
            _up_done = true; // the user finished: close_notify after every byte
            _tx->tls().shutdown();
            break;
        }
        if (*r == 0) {
            break;
        }
        if (!_tx->tls().write(std::span<const std::byte>(scratch.data(), *r))) {
            cut("TLS write to peer failed");
            return;
        }
    }
    _tx->flush();
    maybe_finish();
}

void peer_link::pump_down() {
    if (_state != state::streaming || _u == nullptr || _down_done) {
        return;
    }
    auto& scratch = _w->_scratch;
    while (_u->user_queued() < k_forward_high) {
        auto r = _tx->tls().read(std::span<std::byte>(scratch.data(), scratch.size()));
        if (!r) {
            if (r.code() == errc::again) {
                if (_peer_eof) {
                    cut("peer closed mid-stream"); // TCP end without close_notify: truncated
                    return;
                }
                if (_recv_paused) {
                    _recv_paused = false;
                    _w->_loop->start_recv(_id);
                }
                return;
            }
            if (r.code() == errc::closed) {
                _down_done = true;
                _u->peer_fin();
                maybe_finish();
                return;
            }
            cut("peer TLS: " + _tx->tls().last_error());
            return;
        }
        _u->peer_data(std::span<const std::byte>(scratch.data(), *r));
        if (_state != state::streaming || _u == nullptr) {
            return;
        }
    }
}

void peer_link::maybe_finish() {
    if (_state != state::streaming || !_up_done || !_down_done) {
        return;
    }
    if (_u != nullptr) {
        user_conn* u = _u;
        _u = nullptr;
        u->peer_done();
    }
    if (_tx->idle()) {
        _state = state::dead;
        close_link(false);
    }
}

void peer_link::user_eof_clean() {
    _u = nullptr;
    if (_state != state::streaming) {
        _state = state::dead;
        close_link(true);
        return;
    }
    if (!_up_done) {
        _up_done = true;
        _tx->tls().shutdown();
        _tx->flush();
    }
    // Lingers until its close_notify is sent and the peer's has come (the timer bounds it).
    _w->_wheel->schedule(_timer, _w->ms_from_now(_w->snap().limits.handshake_timeout_ms));
    maybe_finish();
}

void peer_link::drop() {
    _u = nullptr;
    if (_state != state::dead) {
        _state = state::dead;
        close_link(true);
    }
}

void peer_link::on_recv_end(io::conn_id, int res) {
    if (_state == state::dead) {
        return;
    }
    if (_state != state::streaming) {
        fail("peer closed the connection before answering");
        return;
    }
    if (res != 0) {
        cut("peer reset the connection");
        return;
    }
    _peer_eof = true;
    if (_u == nullptr) { // lingering after the user left
        _state = state::dead;
        close_link(!(_up_done && _down_done));
        return;
    }
    if (_down_done) {
        if (_up_done) {
            maybe_finish();
        } else {
            cut("peer closed while the user was still sending");
        }
        return;
    }
    // Records still buffered (the user was slower than the peer) come first: the peer's
    // close_notify may be among them.
    pump_down();
}

void peer_link::on_sent(io::conn_id, int res) {
    if (_state == state::dead) {
        return;
    }
    if (!_tx->on_sent(res)) {
        if (_state == state::streaming) {
            cut("send to peer failed");
        } else {
            fail("send to peer failed");
        }
        return;
    }
    if (_state == state::streaming) {
        if (_u == nullptr && _up_done && _down_done && _tx->idle()) {
            _state = state::dead;
            close_link(false);
            return;
        }
        pump_up();
    }
}

void peer_link::fail(std::string_view why) {
    if (_state == state::dead) {
        return;
    }
    _state = state::dead;
    _w->_counters.add(relay_counter::peer_link_failures);
    log::info("peer_link_failed", {{"worker", _w->_index}, {"peer", _node}, {"reason", why}});
    close_link(true);
    if (_u != nullptr) {
        user_conn* u = _u;
        _u = nullptr;
        u->peer_failed(_node, why);
    }
}

void peer_link::cut(std::string_view why) {
    if (_state == state::dead) {
        return;
    }
    _state = state::dead;
    log::info("peer_link_cut", {{"worker", _w->_index}, {"peer", _node}, {"reason", why}});
    close_link(true);
    if (_u != nullptr) {
        user_conn* u = _u;
        _u = nullptr;
        u->peer_cut(why);
    }
}

void peer_link::close_link(bool abort) {
    _w->_wheel->cancel(_timer);
    if (_id.valid()) {
        _w->_loop->close(_id, abort);
        _id = {};
    }
    _w->bury(this);
}

// --------------------------------------------------------------------------- tunnel_conn impl

namespace {
tunnel::mux_limits mux_limits_from(const relay_limits& l) {
    tunnel::mux_limits m;
    m.max_frame = l.max_frame;
    m.initial_window = l.initial_window;
    m.max_streams = l.max_streams_per_tunnel;
    return m;
}
} // namespace

tunnel_conn::tunnel_conn(worker* w, io::conn_id id, std::unique_ptr<tls::session> s)
    : _w(w), _tx(w->_loop.get(), id, std::move(s), &w->_pool),
      _mux(tunnel::role::relay, mux_limits_from(w->snap().limits), *this) {
    _w->_wheel->schedule(_timer, _w->ms_from_now(_w->snap().limits.handshake_timeout_ms));
}

void tunnel_conn::tick() {
    const auto& lim = _w->snap().limits;
    if (_state == state::handshaking || _state == state::await_hello) {
        fail(relay_counter::tunnel_tls_failed, "TLS handshake or HELLO timed out");
        return;
    }
    if (_state != state::ready && _state != state::draining) {
        return;
    }
    // Liveness (RELIABILITY.md): a connector that stops answering is dead even if its TCP
    // connection looks open (SIGSTOP, half-open path); it gets no new streams from now on.
    if (_w->_now - std::max(_last_rx, _w->_resumed_ns) >
        uint64_t(lim.ping_timeout_ms) * 1'000'000ull) {
        fail(relay_counter::tunnel_ping_timeouts, "missed PING deadline");
        return;
    }
    _mux.ping(_w->_now);
    if (_state == state::ready &&
        _w->_now - _config_sent_ns >= uint64_t(lim.config_refresh_ms) * 1'000'000ull) {
        send_config(true); // periodic refresh (DESIGN.md: connectors re-pull every 2 min)
    }
    _w->mark_dirty(this);
    _w->_wheel->schedule(_timer, _w->ms_from_now(lim.ping_interval_ms));
}

void tunnel_conn::on_recv(io::conn_id, std::span<const std::byte> data) {
    if (_state == state::closed) {
        return;
    }
    _tx.tls().feed(data);
    _last_rx = _w->_now;
    if (_state == state::handing_off) {
        return; // decrypted by the worker that takes it over
    }
    if (_state == state::handshaking) {
        auto r = _tx.tls().handshake();
        _tx.flush();
        if (r.code() == errc::again) {
            return;
        }
        if (!r) {
            fail(r.code() == errc::cert_rejected ? relay_counter::tunnel_cert_rejected
                                                 : relay_counter::tunnel_tls_failed,
                 _tx.tls().last_error());
            return;
        }
        after_handshake();
        if (_state == state::closed) {
            return;
        }
    }
    for (;;) {
        auto r = _tx.tls().read(std::span<std::byte>(_w->_scratch.data(), _w->_scratch.size()));
        if (!r) {
            if (r.code() == errc::again) {
                break;
            }
            if (r.code() == errc::closed) {
                fail(relay_counter::tunnels_closed, "connector closed the tunnel");
            } else {
                fail(relay_counter::tunnel_tls_failed, _tx.tls().last_error());
            }
            return;
        }
        auto m = _mux.receive(std::span<const std::byte>(_w->_scratch.data(), *r), _w->_now);
        if (!m || !_violation.empty()) {
            if (!m || _violation_reason == tunnel::reason::protocol_error) {
                _w->_counters.add(relay_counter::tunnel_protocol_errors);
            }
            goaway(m ? _violation_reason : tunnel::goaway_reason(m.code()),
                   m ? std::string_view(_violation) : m.err().detail);
            return;
        }
        if (_state != state::ready && _state != state::draining && _state != state::await_hello) {
            return; // handing off (HELLO asked for another worker) or closed
        }
    }
    _w->mark_dirty(this);
}

void tunnel_conn::after_handshake() {
    const auto& snap = _w->snap();
    if (!snap.relay_ca_fingerprint.empty() &&
        _tx.tls().peer_root_fingerprint() == snap.relay_ca_fingerprint) {
        // Not a connector: a peer relay of the fleet forwarding a user stream. Only the relay CA
        // issues such certificates (client use, common name "apprelay-peer <node>").
        if (_tx.tls().peer_common_name().rfind(k_peer_cn_prefix, 0) != 0) {
            fail(relay_counter::tunnel_unknown_connector,
                 "relay-CA certificate that is not a peer's: " + _tx.tls().peer_common_name());
            return;
        }
        _w->_wheel->cancel(_timer);
        _state = state::closed;
        _w->peer_in(std::move(_tx));
        _w->bury(this);
        return;
    }
    std::string fp = _tx.tls().peer_fingerprint();
    auto it = snap.connector_by_fingerprint.find(fp);
    if (it == snap.connector_by_fingerprint.end()) {
        fail(relay_counter::tunnel_unknown_connector,
             "certificate " + fp.substr(0, 16) + "... matches no registered connector");
        return;
    }
    const auto& c = snap.connectors[it->second];
    // Second line of defence behind the fingerprint: the certificate must chain to the CA of the
    // connector's own tenant (tenants are forests; a store row naming another tenant's
    // certificate never makes a connector of this one).
    if (_tx.tls().peer_root_fingerprint() != snap.tenants[c.tenant].ca_fingerprint) {
        fail(relay_counter::tunnel_cert_rejected,
             "certificate of connector " + c.id + " is not issued by tenant " +
                 snap.tenants[c.tenant].name + "'s CA");
        return;
    }
    _connector = int32_t(it->second);
    _group = c.group;
    _fingerprint = std::move(fp);
    _connector_id = c.id;
    _group_key = snap.tenants[c.tenant].name + "/" + snap.groups[c.group].name;
    _group_id = snap.groups[c.group].id;
    _state = state::await_hello;
}

void tunnel_conn::on_hello(const tunnel::hello& h) {
    // Called from inside mux::receive: violations are recorded and acted on once it returns.
    const auto& snap = _w->snap();
    if (_state != state::await_hello) {
        _violation = "HELLO after the tunnel was set up";
        return;
    }
    const auto& c = snap.connectors[std::size_t(_connector)];
    if (h.connector_id != c.id) {
        _violation = "HELLO claims another connector id than its certificate";
        return;
    }
    // Version gate (DESIGN.md): an older connector is refused with both versions named.
    if (compare_versions(h.connector_version, snap.min_connector_version) < 0) {
        _w->_counters.add(relay_counter::tunnel_version_refused);
        _violation = "connector version " + std::string(h.connector_version) +
                     " is older than the minimum " + snap.min_connector_version;
        _violation_reason = tunnel::reason::version_too_old;
        return;
    }
    _version = std::string(h.connector_version);
    // A backend whose connections cannot move (dpdk: the flow hash chose the worker) keeps the
    // tunnel here; HELLO_ACK names the worker it landed on.
    if (h.worker_index != tunnel::k_any_worker && h.worker_index != _w->_index &&
        _w->_loop->can_hand_over()) {
        if (h.worker_index >= _w->_worker_count) {
            _violation = "HELLO asks for a worker the relay does not have";
            return;
        }
        _target_worker = h.worker_index;
        _state = state::handing_off;
        _w->_wheel->cancel(_timer); // timers never cross workers
        _handoff_pending = true;
        if (_tx.idle()) {
            _handoff_pending = false;
            _w->_loop->detach(_tx.id());
        }
        return;
    }
    if (!send_hello_ack()) {
        _violation = "the connector has max_tunnels_per_connector tunnels on this worker";
        _violation_reason = tunnel::reason::rate_limited;
    }
}

bool tunnel_conn::send_hello_ack() {
    const auto& snap = _w->snap();
    const uint32_t max_tunnels = snap.limits.max_tunnels_per_connector;
    if (max_tunnels != 0 && _w->tunnels_of(_connector_id) >= max_tunnels) {
        // One connector (one certificate) cannot take the worker's memory and descriptors by
        // opening tunnel after tunnel; it is told why and backs off.
        _w->_counters.add(relay_counter::tunnel_limit_refused);
        return false;
    }
    tunnel::hello_ack a{};
    a.proto_version = 1;
    a.worker_index = _w->_index;
    a.worker_count = _w->_worker_count;
    a.max_frame = snap.limits.max_frame;
    a.initial_window = snap.limits.initial_window;
    a.max_streams = snap.limits.max_streams_per_tunnel;
    a.ping_interval_ms = snap.limits.ping_interval_ms;
    a.latest_version = snap.latest_connector_version;
    a.min_version = snap.min_connector_version;
    _mux.send_hello_ack(a);
    _state = state::ready;
    _last_rx = _w->_now;
    _w->_wheel->schedule(_timer, _w->ms_from_now(snap.limits.ping_interval_ms));
    send_config(true);
    _w->tunnel_ready(this);
    log::info("tunnel_up", {{"worker", _w->_index},
                            {"connector", _connector_id},
                            {"group", _group_key},
                            {"version", _version}});
    _w->mark_dirty(this);
    return true;
}

void tunnel_conn::send_config(bool force) {
    const auto& snap = _w->snap();
    const auto& body = snap.connectors[std::size_t(_connector)].config_body;
    if (!force && body == _config_sent) {
        return;
    }
    _mux.send_config(snap.version, std::as_bytes(std::span(body.data(), body.size())));
    _config_sent = body;
    _config_sent_ns = _w->_now;
    _w->_counters.add(relay_counter::configs_sent);
    _w->mark_dirty(this);
}

void tunnel_conn::reconfigure() {
    if (_state == state::handshaking || _state == state::handing_off || _state == state::closed) {
        return; // identity not known yet, or resolved by the worker that adopts it
    }
    const auto& snap = _w->snap();
    auto it = snap.connector_by_fingerprint.find(_fingerprint);
    if (it == snap.connector_by_fingerprint.end()) {
        // Deleted (revoked): its tunnels close now, streams in flight are reset (RELIABILITY.md
        // Revocation).
        fail(relay_counter::tunnel_revoked, "connector deleted: certificate revoked");
        return;
    }
    const auto& c = snap.connectors[it->second];
    std::string key = snap.tenants[c.tenant].name + "/" + snap.groups[c.group].name;
    _connector = int32_t(it->second);
    const uint64_t gid = snap.groups[c.group].id;
    const bool moved = gid != _group_id; // a rename keeps the id: label change only
    _group_id = gid;
    if (_state == state::ready && moved) {
        log::info("connector_moved", {{"worker", _w->_index},
                                      {"connector", _connector_id},
                                      {"from", _group_key},
                                      {"to", key},
                                      {"streams", _streams.size()}});
        _group_key = std::move(key);
        _w->_counters.add(relay_counter::tunnels_moved);
        // Leave the routing table under the old group, then take the new index.
        drain_with(tunnel::reason::no_error, "connector moved to group " + _group_key);
        _group = c.group;
        return;
    }
    _group = c.group;
    _group_key = std::move(key);
    if (_state == state::ready) {
        send_config(false);
    }
}

void tunnel_conn::on_detached(io::conn_id, int fd) {
    _w->handoff(this, fd);
}

void tunnel_conn::drain() {
    if (_state == state::draining) {
        return;
    }
    if (_state != state::ready) {
        fail(relay_counter::tunnels_closed, "relay shutting down");
        return;
    }
    drain_with(tunnel::reason::shutting_down, "relay shutting down");
}

void tunnel_conn::drain_with(tunnel::reason code, std::string_view why) {
    // GOAWAY: no new streams here; streams in flight finish; service() closes once drained.
    _mux.goaway(code, why);
    _w->tunnel_gone(this);
    _state = state::draining;
    _w->mark_dirty(this);
}

void tunnel_conn::adopt_on(worker* w, io::conn_id id) {
    _w = w;
    _tx.rebind(w->_loop.get(), id, &w->_pool);
    w->_loop->start_recv(id);
    // This worker may be on a newer snapshot than the one that identified the connector.
    auto it = w->snap().connector_by_fingerprint.find(_fingerprint);
    if (it == w->snap().connector_by_fingerprint.end()) {
        fail(relay_counter::tunnel_revoked, "connector deleted: certificate revoked");
        return;
    }
    _connector = int32_t(it->second);
    _group = w->snap().connectors[it->second].group;
    if (!send_hello_ack()) {
        goaway(tunnel::reason::rate_limited,
               "the connector has max_tunnels_per_connector tunnels on this worker");
        return;
    }
    // Bytes that arrived during the hand-over are already inside the TLS session.
    on_recv(id, {});
}

result<uint32_t> tunnel_conn::open_stream(user_conn* u, const app_entry& app) {
    if (_unacked >= _w->snap().limits.max_pending_opens) {
        // The connector is not answering its OPENs (stopped, overloaded, malicious): new
        // streams go to another tunnel of the group instead of queueing behind these.
        _w->_counters.add(relay_counter::tunnel_pending_opens_full);
        return error(errc::overloaded, "tunnel has too many unanswered OPENs");
    }
    auto sid = _mux.open(app.name, app.backend, _w->_now);
    if (!sid) {
        return sid.err();
    }
    _streams.emplace(*sid, u);
    ++_unacked;
    return *sid;
}

void tunnel_conn::erase_stream(std::unordered_map<uint32_t, user_conn*>::iterator it) {
    if (!it->second->acked() && _unacked > 0) {
        --_unacked;
    }
    _streams.erase(it);
}

void tunnel_conn::forget_stream(uint32_t sid, bool reset) {
    auto it = _streams.find(sid);
    if (it == _streams.end()) {
        return;
    }
    erase_stream(it);
    if (reset) {
        _w->_counters.add(relay_counter::streams_reset);
        _pending.reset.push_back(sid);
        _w->mark_dirty(this);
    }
}

void tunnel_conn::on_open_ack(uint32_t sid) {
    auto it = _streams.find(sid);
    if (it != _streams.end()) {
        if (!it->second->acked() && _unacked > 0) {
            --_unacked;
        }
        it->second->opened();
    }
}

void tunnel_conn::on_open_fail(uint32_t sid, tunnel::reason, std::string_view msg) {
    auto it = _streams.find(sid);
    if (it == _streams.end()) {
        return;
    }
    user_conn* u = it->second;
    erase_stream(it);
    log::info(
        "stream_failed",
        {{"worker", _w->_index}, {"sid", sid}, {"connector", _connector_id}, {"reason", msg}});
    if (!u->retry(_connector_id, msg)) {
        u->abort(relay_counter::streams_failed_backend);
    }
}

void tunnel_conn::on_data(uint32_t sid, std::span<const std::byte> bytes) {
    auto it = _streams.find(sid);
    if (it == _streams.end()) {
        return;
    }
    it->second->tunnel_data(bytes);
}

void tunnel_conn::on_fin(uint32_t sid) {
    auto it = _streams.find(sid);
    if (it != _streams.end()) {
        it->second->tunnel_fin();
    }
}

void tunnel_conn::on_reset(uint32_t sid, tunnel::reason, std::string_view) {
    auto it = _streams.find(sid);
    if (it == _streams.end()) {
        return;
    }
    user_conn* u = it->second;
    erase_stream(it);
    if (!u->acked() && u->retry(_connector_id, "stream reset before OPEN_ACK")) {
        return;
    }
    u->abort(relay_counter::streams_reset);
}

void tunnel_conn::on_stream_closed(uint32_t sid) {
    auto it = _streams.find(sid);
    if (it == _streams.end()) {
        return;
    }
    user_conn* u = it->second;
    erase_stream(it);
    u->stream_closed();
}

void tunnel_conn::on_goaway(uint32_t, tunnel::reason, std::string_view msg) {
    // The connector is draining: no new streams here; streams in flight finish.
    log::info("tunnel_draining", {{"worker", _w->_index}, {"reason", msg}});
    if (routed && !_peer_draining) {
        _w->tunnel_gone(this);
        _peer_draining = true;
        _w->emit(tunnel_event::kind::draining, _connector_id, {});
        return;
    }
    _w->tunnel_gone(this);
}

std::size_t tunnel_conn::pull(uint32_t sid, std::span<std::byte> dst) {
    auto it = _streams.find(sid);
    if (it == _streams.end()) {
        return 0;
    }
    return it->second->pull(dst);
}

void tunnel_conn::service() {
    if (_state == state::closed || _state == state::handing_off) {
        return;
    }
    auto data = std::span<std::byte>(_w->_scratch.data(), _w->_scratch.size());
    if (!io::pump_tunnel(_mux, _tx, _pending, data)) {
        fail(relay_counter::tunnel_tls_failed, _tx.tls().last_error());
        return;
    }
    if (drained() && !_w->_draining) {
        fail(relay_counter::tunnels_closed, "drained"); // moved connector: its streams are done
    }
}

void tunnel_conn::on_sent(io::conn_id, int res) {
    if (_state == state::closed) {
        return;
    }
    _w->_counters.add(relay_counter::tunnel_sends);
    if (!_tx.on_sent(res)) {
        fail(relay_counter::tunnels_closed, "send to connector failed");
        return;
    }
    if (_handoff_pending && _tx.idle()) {
        _handoff_pending = false;
        _w->_loop->detach(_tx.id());
        return;
    }
    _w->mark_dirty(this);
}

void tunnel_conn::on_recv_end(io::conn_id, int res) {
    fail(relay_counter::tunnels_closed,
         res == 0 ? "connector closed the connection" : "connection to connector failed");
}

void tunnel_conn::goaway(tunnel::reason code, std::string_view why) {
    if (_state == state::closed) {
        return;
    }
    _mux.goaway(code, why);
    std::size_t n = _mux.produce(std::span<std::byte>(_w->_scratch.data(), _w->_scratch.size()));
    if (n > 0) {
        (void)_tx.tls().write(std::span<const std::byte>(_w->_scratch.data(), n));
    }
    _tx.flush();
    fail(relay_counter::tunnels_closed, why);
}

void tunnel_conn::close_all_streams() {
    auto streams = std::move(_streams);
    _streams.clear();
    for (auto& [sid, u] : streams) {
        // Not yet acknowledged: nothing reached the user, another connector may take it.
        if (!u->acked() && u->retry(_connector_id, "tunnel lost before OPEN_ACK")) {
            continue;
        }
        // The tunnel is gone: every stream in flight is cut and says so (RST), never a clean end.
        u->abort(relay_counter::streams_reset);
    }
}

void tunnel_conn::fail(relay_counter counter, std::string_view why) {
    if (_state == state::closed) {
        return;
    }
    _w->_counters.add(counter);
    if (counter != relay_counter::tunnels_closed) {
        _w->_counters.add(relay_counter::tunnels_closed);
    }
    log::info("tunnel_down", {{"worker", _w->_index},
                              {"connector", _connector >= 0 ? std::string_view(_connector_id)
                                                            : std::string_view("unidentified")},
                              {"reason", why},
                              {"streams", _streams.size()}});
    _w->tunnel_gone(this);
    if (_peer_draining) {
        _peer_draining = false;
        _w->emit(tunnel_event::kind::drained, _connector_id, {});
    }
    _state = state::closed;
    close_all_streams();
    _w->_loop->close(_tx.id(), false);
    _w->bury(this);
}

// ------------------------------------------------------------------------------- worker impl

class worker::listener_sink final : public io::sink {
public:
    listener_sink(worker* w, bool tunnel) : _w(w), _tunnel(tunnel) {}
    void on_accept(io::conn_id, io::conn_id conn, const sockaddr_storage& peer) override {
        if (_tunnel) {
            _w->on_tunnel_accept(conn);
        } else {
            _w->on_user_accept(conn, peer);
        }
    }

private:
    worker* _w;
    bool _tunnel;
};

worker::worker(uint16_t index, uint16_t worker_count, config_cell* config)
    : _index(index), _worker_count(worker_count), _cfg(config, index), _events(4096),
      _scratch(k_scratch) {
    _by_group.resize(snap().groups.size());
    _rng ^= (uint64_t(index) + 1) * 0xbf58476d1ce4e5b9ull;
}

worker::~worker() {
    // The ring first: once it is closed the kernel cancels what is in flight without touching
    // the connections' buffers any more.
    _wake_target.store(nullptr, std::memory_order_release);
    _loop.reset();
    for (auto* t : _tunnels) {
        delete t;
    }
    for (auto* u : _users) {
        delete u;
    }
    for (auto* p : _links) {
        delete p;
    }
    reap();
    for (auto* t : _dead_tunnels) {
        delete t;
    }
    for (auto* u : _dead_users) {
        delete u;
    }
    for (auto* p : _dead_links) {
        delete p;
    }
}

void worker::set_peers(std::vector<worker*> peers,
                       std::vector<core::spsc_ring<handoff_msg>*> inbound,
                       std::vector<core::spsc_ring<handoff_msg>*> outbound) {
    _peers = std::move(peers);
    _inbound = std::move(inbound);
    _outbound = std::move(outbound);
}

void worker::emit(tunnel_event::kind what, std::string_view connector, std::string_view version) {
    tunnel_event e;
    e.what = what;
    connector.copy(e.connector_id, std::min(connector.size(), sizeof e.connector_id - 1));
    version.copy(e.version, std::min(version.size(), sizeof e.version - 1));
    if (!_event_backlog.empty() || !_events.try_push(e)) {
        _event_backlog.push_back(e); // never lost: status must not drift
    }
}

void worker::flush_events() {
    std::size_t i = 0;
    while (i < _event_backlog.size() && _events.try_push(_event_backlog[i])) {
        ++i;
    }
    _event_backlog.erase(_event_backlog.begin(), _event_backlog.begin() + long(i));
}

void worker::refresh_config() {
    if (_cfg.refresh()) {
        apply_config();
    }
}

void worker::apply_config() {
    // Indices of the old snapshot are meaningless now: every tunnel re-resolves its identity
    // (revoked ones close, moved ones drain), then the routing table is rebuilt.
    _counters.add(relay_counter::config_updates);
    apply_coalescing();
    apply_source_limits();
    auto tunnels = _tunnels;
    for (auto* t : tunnels) {
        t->reconfigure();
    }
    _by_group.assign(snap().groups.size(), {});
    for (auto* t : _tunnels) {
        if (t->routed) {
            _by_group[t->group()].push_back(t);
        }
    }
}

void worker::wake() noexcept {
    if (auto* l = _wake_target.load(std::memory_order_acquire)) {
        l->wake();
    }
}

void worker::on_user_accept(io::conn_id id, const sockaddr_storage& peer) {
    if (_draining) {
        _loop->close(id);
        return;
    }
    source_key src = source_key_of(peer);
    _counters.add(relay_counter::user_conns_accepted);
    const uint32_t max_users = snap().limits.max_user_connections;
    if (max_users != 0 && _users.size() >= std::max<uint32_t>(max_users / _worker_count, 1)) {
        // The worker's share of the relay's connection budget (below the fd limit) is open.
        _counters.add(relay_counter::user_conns_refused_full);
        if (_full_logged_ns == 0 || _now - _full_logged_ns >= 1'000'000'000ull) {
            _full_logged_ns = _now;
            log::warn("user_connections_full", {{"worker", _index},
                                                {"open", _users.size()},
                                                {"max_user_connections", max_users},
                                                {"source", source_key_text(src)}});
        }
        _loop->close(id, true);
        return;
    }
    if (const uint64_t budget = snap().limits.user_buffer_budget;
        budget != 0 && _user_buffered >= budget) {
        // Slow readers (or a flood of uploads) hold the worker's budget of user bytes: no new
        // user until they drain or go; the streams open keep their windows.
        _counters.add(relay_counter::user_conns_refused_memory);
        ++_budget_unlogged;
        if (_budget_logged_ns == 0 || _now - _budget_logged_ns >= 1'000'000'000ull) {
            log::warn("user_buffer_budget_full", {{"worker", _index},
                                                  {"buffered", _user_buffered},
                                                  {"user_buffer_budget", budget},
                                                  {"refused_since_last_line", _budget_unlogged},
                                                  {"source", source_key_text(src)}});
            _budget_logged_ns = _now;
            _budget_unlogged = 0;
        }
        _loop->close(id, true);
        return;
    }
    bool counted = false;
    if (auto v = _sources.admit(src, _now, &counted); v != source_budget::verdict::admit) {
        throttled(src, v);
        _loop->close(id, true); // RST: no TLS work, no TIME_WAIT kept for a source that floods
        return;
    }
    auto* u = new user_conn(this, id, _cfg->user_tls->new_session(), src, counted);
    u->pos = _users.size();
    _users.push_back(u);
    _counters.set(relay_counter::user_conns_open, _users.size());
    _loop->set_owner(id, u);
    _loop->start_recv(id);
}

void worker::advance_clock() {
    const uint64_t before = _now;
    _now = mono_ns();
    if (_now - before > k_stall_ns) {
        _resumed_ns = _now;
        log::warn("worker_stalled", {{"worker", _index}, {"ms", (_now - before) / 1'000'000}});
    }
}

void worker::idle_cut(std::string_view app, uint64_t idle_ms) {
    ++_idle_unlogged;
    if (_idle_logged_ns != 0 && _now - _idle_logged_ns < 1'000'000'000ull) {
        return;
    }
    log::info("stream_idle_timeout", {{"worker", _index},
                                      {"app", app},
                                      {"idle_timeout_ms", idle_ms},
                                      {"cut_since_last_line", _idle_unlogged}});
    _idle_logged_ns = _now;
    _idle_unlogged = 0;
}

void worker::apply_coalescing() {
    if (auto* u = dynamic_cast<io::uring_loop*>(_loop.get())) {
        u->set_coalescing(io::uring_loop::k_coalesce_events,
                          uint64_t(snap().limits.io_coalesce_us) * 1000);
    }
}

void worker::apply_source_limits() {
    const auto& l = snap().limits;
    const uint32_t n = std::max<uint32_t>(_worker_count, 1);
    auto share = [n](uint32_t v, bool burst) {
        return v == 0 ? (burst ? 1u : 0u) : std::max<uint32_t>(v / n, 1);
    };
    source_limits s = _sources.limits();
    s.open_rate = share(l.source_open_rate, false);
    s.open_burst = share(l.source_open_burst, true);
    s.abort_rate = share(l.source_abort_rate, false);
    s.abort_burst = share(l.source_abort_burst, true);
    s.max_conns = share(l.source_max_connections, false);
    _sources.set_limits(s);
}

void worker::throttled(const source_key& k, source_budget::verdict v) {
    const bool conns = v == source_budget::verdict::conns_exhausted;
    const bool aborts = v == source_budget::verdict::aborts_exhausted;
    if (conns) {
        _counters.add(relay_counter::user_conns_refused_source);
    } else {
        _counters.add(relay_counter::user_conns_throttled);
    }
    if (aborts) {
        _counters.add(relay_counter::user_conns_throttled_aborts);
    }
    ++_throttled_unlogged;
    if (_throttle_logged_ns != 0 && _now - _throttle_logged_ns < 1'000'000'000ull) {
        return;
    }
    const auto& l = snap().limits;
    log::info("source_throttled",
              {{"worker", _index},
               {"source", source_key_text(k)},
               {"budget", conns ? "connections" : aborts ? "aborts" : "opens"},
               {"limit", conns    ? l.source_max_connections
                         : aborts ? l.source_abort_rate
                                  : l.source_open_rate},
               {"refused_since_last_line", _throttled_unlogged}});
    _throttle_logged_ns = _now;
    _throttled_unlogged = 0;
}

void worker::on_tunnel_accept(io::conn_id id) {
    if (_draining) {
        _loop->close(id);
        return;
    }
    _counters.add(relay_counter::tunnels_accepted);
    auto* t = new tunnel_conn(this, id, _cfg->tunnel_tls->new_session());
    t->pos = _tunnels.size();
    _tunnels.push_back(t);
    _loop->set_owner(id, t);
    _loop->start_recv(id);
}

void worker::mark_dirty(tunnel_conn* t) {
    if (!t->dirty) {
        t->dirty = true;
        _dirty.push_back(t);
    }
}

tunnel_conn* worker::pick_tunnel(uint32_t group, const std::vector<std::string>* exclude) {
    if (group >= _by_group.size()) {
        return nullptr;
    }
    return pick_least_loaded(std::span<tunnel_conn* const>(_by_group[group]), _rng,
                             [exclude](const tunnel_conn* t) {
                                 if (exclude != nullptr) {
                                     for (const auto& id : *exclude) {
                                         if (t->connector_id() == id) {
                                             return false;
                                         }
                                     }
                                 }
                                 return true;
                             });
}

void worker::tunnel_ready(tunnel_conn* t) {
    if (t->routed) {
        return;
    }
    t->routed = true;
    ++_tunnels_per_connector[t->connector_id()];
    _by_group[t->group()].push_back(t);
    _counters.set(relay_counter::tunnels_up, _counters.get(relay_counter::tunnels_up) + 1);
    emit(tunnel_event::kind::up, t->connector_id(), t->version());
}

void worker::tunnel_gone(tunnel_conn* t) {
    if (!t->routed) {
        return;
    }
    t->routed = false;
    if (auto it = _tunnels_per_connector.find(t->connector_id());
        it != _tunnels_per_connector.end() && --it->second == 0) {
        _tunnels_per_connector.erase(it);
    }
    if (t->group() < _by_group.size()) {
        auto& v = _by_group[t->group()];
        auto it = std::find(v.begin(), v.end(), t);
        if (it != v.end()) {
            v.erase(it);
        }
    }
    _counters.set(relay_counter::tunnels_up, _counters.get(relay_counter::tunnels_up) - 1);
    emit(tunnel_event::kind::down, t->connector_id(), {});
}

void worker::handoff(tunnel_conn* t, int fd) {
    // Remove from this worker's books; the target owns it from now on.
    _tunnels[t->pos] = _tunnels.back();
    _tunnels[t->pos]->pos = t->pos;
    _tunnels.pop_back();
    t->dirty = false;
    _dirty.erase(std::remove(_dirty.begin(), _dirty.end(), t), _dirty.end());
    _counters.add(relay_counter::tunnels_handed_off);
    handoff_msg m{t, fd};
    // The target index was validated against worker_count in on_hello.
    auto* ring = _outbound[t->handoff_target()];
    while (!ring->try_push(m)) {
        // The ring holds 1024 hand-overs; one tunnel per connector per worker at setup never
        // fills it. If it does, yield the core for the target to catch up.
        _peers[t->handoff_target()]->wake();
    }
    _peers[t->handoff_target()]->wake();
}

void worker::drain_handoffs() {
    for (auto* ring : _inbound) {
        if (ring == nullptr) {
            continue;
        }
        handoff_msg m;
        while (ring->try_pop(m)) {
            auto id = _loop->adopt(m.fd, m.tunnel);
            if (!id) {
                ::close(m.fd);
                delete m.tunnel;
                continue;
            }
            m.tunnel->pos = _tunnels.size();
            _tunnels.push_back(m.tunnel);
            m.tunnel->adopt_on(this, *id);
            if (_draining) {
                m.tunnel->drain();
            }
        }
    }
}

void worker::service_dirty() {
    // Tunnels marked while servicing are handled in the same pass.
    for (std::size_t i = 0; i < _dirty.size(); ++i) {
        tunnel_conn* t = _dirty[i];
        t->dirty = false;
        t->service();
    }
    _dirty.clear();
}

void worker::bury(tunnel_conn* t) {
    _tunnels[t->pos] = _tunnels.back();
    _tunnels[t->pos]->pos = t->pos;
    _tunnels.pop_back();
    if (t->dirty) {
        t->dirty = false;
        _dirty.erase(std::remove(_dirty.begin(), _dirty.end(), t), _dirty.end());
    }
    _dead_tunnels.push_back(t);
}

void worker::bury(user_conn* u) {
    _users[u->pos] = _users.back();
    _users[u->pos]->pos = u->pos;
    _users.pop_back();
    _counters.set(relay_counter::user_conns_open, _users.size());
    _dead_users.push_back(u);
}

void worker::bury(peer_link* p) {
    _links[p->pos] = _links.back();
    _links[p->pos]->pos = p->pos;
    _links.pop_back();
    _dead_links.push_back(p);
}

void worker::peer_in(io::tls_transport&& tx) {
    const io::conn_id id = tx.id();
    auto* u = new user_conn(this, std::move(tx));
    u->pos = _users.size();
    _users.push_back(u);
    _counters.set(relay_counter::user_conns_open, _users.size());
    _loop->set_owner(id, u);
    u->read_header();
}

void worker::reap() {
    for (auto* p : _reap_links) {
        delete p;
    }
    _reap_links.clear();
    for (auto* t : _reap_tunnels) {
        delete t;
    }
    _reap_tunnels.clear();
    for (auto* u : _reap_users) {
        delete u;
    }
    _reap_users.clear();
}

void worker::begin_drain() {
    _draining = true;
    _loop->close(_user_listen_id);
    _loop->close(_tunnel_listen_id);
    auto tunnels = _tunnels;
    for (auto* t : tunnels) {
        t->drain();
    }
    auto users = _users;
    for (auto* u : users) {
        if (u->handshaking()) {
            u->abort(relay_counter::streams_reset);
        }
    }
}

void worker::drain_step(bool deadline_passed) {
    auto tunnels = _tunnels;
    for (auto* t : tunnels) {
        if (deadline_passed || t->drained()) {
            t->fail(relay_counter::tunnels_closed,
                    deadline_passed ? "drain deadline passed" : "drained");
        }
    }
    if (deadline_passed) {
        auto users = _users;
        for (auto* u : users) {
            u->abort(relay_counter::streams_reset); // cut: RST, never a clean end
        }
    }
}

bool worker::run(const std::atomic<bool>& stop, std::string* why) {
    if (_make_loop) {
        auto l = _make_loop(_index, why);
        if (!l) {
            return false;
        }
        _loop = std::move(*l);
    } else {
        auto l = io::uring_loop::create(io::loop_options{}, why);
        if (!l) {
            return false;
        }
        _loop = std::move(*l);
    }
    _now = mono_ns();
    _wheel = std::make_unique<core::timer_wheel>(k_timer_tick_ns, _now);
    _loop->set_wake_handler([this] { drain_handoffs(); });
    _wake_target.store(_loop.get(), std::memory_order_release);
    _user_listener = std::make_unique<listener_sink>(this, false);
    _tunnel_listener = std::make_unique<listener_sink>(this, true);
    auto ul = _loop->listen(_user_listen, _user_listener.get());
    auto tl = _loop->listen(_tunnel_listen, _tunnel_listener.get());
    if (!ul || !tl) {
        *why = "cannot arm listeners";
        return false;
    }
    _user_listen_id = *ul;
    _tunnel_listen_id = *tl;

    apply_coalescing();
    apply_source_limits();
    uint64_t drain_deadline = 0;
    for (;;) {
        advance_clock();
        refresh_config();
        flush_events();
        if (stop.load(std::memory_order_relaxed) && !_draining) {
            begin_drain();
            drain_deadline = ms_from_now(snap().limits.drain_deadline_ms);
        }
        if (_draining) {
            drain_step(_now >= drain_deadline);
            if (_users.empty() && _tunnels.empty() && _links.empty() &&
                _loop->open_sockets() == 0) {
                break;
            }
            if (_now >= drain_deadline + 1'000'000'000ull) {
                break; // sockets that did not finish closing in 1 s are closed by the loop
            }
        }
        service_dirty();
        uint64_t wait = 0;
        if (_dirty.empty()) {
            uint64_t next = _wheel->next_deadline_hint(_now);
            wait = next <= _now ? 0 : std::min(k_max_wait_ns, next - _now);
        }
        // Connections closed before this run_once are freed after it (see _reap_users).
        _reap_tunnels.swap(_dead_tunnels);
        _reap_users.swap(_dead_users);
        _reap_links.swap(_dead_links);
        _loop->run_once(wait);
        reap();
        _counters.add(relay_counter::loop_iterations);
        advance_clock();
        drain_handoffs();
        _wheel->advance(_now);
        if (_now - _trimmed_ns >= 5'000'000'000ull) {
            // Buffer chunks no stream needed for 5 s go back to the allocator, and the heap's
            // free top to the system once a burst's worth was freed: after load, memory returns
            // to its idle level (bench/soak.py checks it).
            _trimmed_ns = _now;
            if (_pool.trim_unused(k_pool_keep) >= k_pool_keep) {
                ::malloc_trim(0);
            }
        }
        if (_now - _sources_swept_ns >= 1'000'000'000ull) {
            _sources_swept_ns = _now;
            _sources.sweep(_now);
            _counters.set(relay_counter::sources_tracked, _sources.tracked());
            _counters.set(relay_counter::sources_untracked, _sources.table_full());
            _counters.set(relay_counter::user_buffered_bytes, _user_buffered);
        }
    }
    reap();
    return true;
}

} // namespace apprelay::relay
