// apprelay-testbackend: a plain TCP backend for integration tests and the demo.
//
//   --listen 127.0.0.1:0 --mode echo|sink|source [--ready-file PATH] [--threads N]
//
// Modes (per connection):
//   echo   every byte read is written back; when the client half-closes and everything has been
//          echoed, the backend half-closes too, then closes when the client is gone.
//   source reads an 8-byte big-endian length N, sends N bytes of the pattern
//          byte i = (i*31+7) & 0xff, then half-closes and closes once the client closes.
//   sink   reads until EOF, replies with the 8-byte big-endian count of bytes read, closes.
//
// One epoll loop per thread, level-triggered, nonblocking sockets; the listening socket is
// shared with EPOLLEXCLUSIVE so each connection lands on exactly one thread, which owns it.
// Memory per connection is bounded by k_buf_size: echo stops reading while its buffer is full,
// so a client that does not read back only stalls itself.
#include <arpa/inet.h>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <memory>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <string>
#include <string_view>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <unordered_map>
#include <vector>

namespace {

constexpr std::size_t k_buf_size = 256 * 1024; // echo buffer per connection; also the read size
constexpr int k_max_events = 256;
constexpr std::size_t k_pattern_period = 256; // (i*31+7)&0xff repeats every 256 bytes

enum class mode { echo, sink, source };

std::atomic<bool> g_stop{false};

void on_signal(int) {
    g_stop.store(true);
}

struct connection {
    int fd = -1;
    // echo: bytes in buf[head, tail) wait to be written back.
    std::unique_ptr<uint8_t[]> buf;
    std::size_t head = 0;
    std::size_t tail = 0;
    bool peer_eof = false; // read returned 0
    bool wr_shut = false;  // we sent FIN
    // source
    uint8_t hdr[8] = {};
    std::size_t hdr_len = 0;
    uint64_t to_send = 0;
    uint64_t sent = 0;
    // sink
    uint64_t received = 0;
    uint8_t reply[8] = {};
    std::size_t reply_sent = 0;
    uint32_t events = 0; // current epoll interest
};

struct worker {
    int listen_fd;
    mode m;
    int ep = -1;
    std::unordered_map<int, std::unique_ptr<connection>> conns;
    std::vector<uint8_t> scratch = std::vector<uint8_t>(k_buf_size);
    std::vector<uint8_t> pattern;
    uint64_t accepted = 0;

    worker(int lfd, mode md) : listen_fd(lfd), m(md) {
        pattern.resize(k_buf_size + k_pattern_period);
        for (std::size_t i = 0; i < pattern.size(); ++i) {
            pattern[i] = uint8_t((i * 31 + 7) & 0xff);
        }
    }

    void set_interest(connection& c, uint32_t ev) {
        if (ev == c.events) {
            return;
        }
        epoll_event e{};
        e.events = ev;
        e.data.fd = c.fd;
        epoll_ctl(ep, EPOLL_CTL_MOD, c.fd, &e);
        c.events = ev;
    }

    void close_conn(int fd) {
        epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
        ::close(fd);
        conns.erase(fd);
    }

    void accept_all() {
        for (int i = 0; i < 1024; ++i) { // bounded burst per wakeup
            int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                return; // EAGAIN (another thread took it) or a transient error
            }
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            auto c = std::make_unique<connection>();
            c->fd = fd;
            if (m == mode::echo) {
                c->buf = std::make_unique<uint8_t[]>(k_buf_size);
            }
            c->events = EPOLLIN | EPOLLRDHUP;
            epoll_event e{};
            e.events = c->events;
            e.data.fd = fd;
            if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) != 0) {
                ::close(fd);
                continue;
            }
            conns.emplace(fd, std::move(c));
            ++accepted;
        }
    }

    // Returns false when the connection is finished and must be closed.
    bool step_echo(connection& c) {
        for (int round = 0; round < 64; ++round) {
            bool progress = false;
            if (c.head < c.tail) {
                ssize_t n = ::send(c.fd, c.buf.get() + c.head, c.tail - c.head, MSG_NOSIGNAL);
                if (n > 0) {
                    c.head += std::size_t(n);
                    progress = true;
                } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                    return false;
                }
                if (c.head == c.tail) {
                    c.head = c.tail = 0;
                }
            }
            if (!c.peer_eof && c.tail < k_buf_size) {
                ssize_t n = ::recv(c.fd, c.buf.get() + c.tail, k_buf_size - c.tail, 0);
                if (n > 0) {
                    c.tail += std::size_t(n);
                    progress = true;
                } else if (n == 0) {
                    c.peer_eof = true;
                    progress = true;
                } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                    return false;
                }
            }
            if (c.peer_eof && c.head == c.tail && !c.wr_shut) {
                ::shutdown(c.fd, SHUT_WR);
                c.wr_shut = true;
            }
            if (c.wr_shut) {
                return false; // both directions done
            }
            if (!progress) {
                break;
            }
        }
        uint32_t ev = 0;
        if (!c.peer_eof && c.tail < k_buf_size) {
            ev |= EPOLLIN | EPOLLRDHUP;
        }
        if (c.head < c.tail) {
            ev |= EPOLLOUT;
        }
        set_interest(c, ev);
        return true;
    }

    // After our FIN, wait for the client to go away; reading drains anything it still sends.
    bool drain_until_eof(connection& c) {
        for (int round = 0; round < 64; ++round) {
            ssize_t n = ::recv(c.fd, scratch.data(), scratch.size(), 0);
            if (n > 0) {
                continue;
            }
            if (n == 0) {
                return false;
            }
            return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
        }
        return true;
    }

    bool step_source(connection& c) {
        if (c.wr_shut) {
            set_interest(c, EPOLLIN | EPOLLRDHUP);
            return drain_until_eof(c);
        }
        while (c.hdr_len < 8) {
            ssize_t n = ::recv(c.fd, c.hdr + c.hdr_len, 8 - c.hdr_len, 0);
            if (n > 0) {
                c.hdr_len += std::size_t(n);
                if (c.hdr_len == 8) {
                    uint64_t v = 0;
                    for (uint8_t b : c.hdr) {
                        v = (v << 8) | b;
                    }
                    c.to_send = v;
                }
            } else if (n == 0) {
                return false;
            } else {
                return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
            }
        }
        for (int round = 0; round < 64 && c.sent < c.to_send; ++round) {
            std::size_t off = std::size_t(c.sent % k_pattern_period);
            std::size_t len = std::size_t(std::min<uint64_t>(c.to_send - c.sent, k_buf_size));
            ssize_t n = ::send(c.fd, pattern.data() + off, len, MSG_NOSIGNAL);
            if (n > 0) {
                c.sent += uint64_t(n);
            } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
                break;
            } else {
                return false;
            }
        }
        if (c.sent == c.to_send) {
            ::shutdown(c.fd, SHUT_WR);
            c.wr_shut = true;
            set_interest(c, EPOLLIN | EPOLLRDHUP);
            return drain_until_eof(c);
        }
        set_interest(c, EPOLLOUT);
        return true;
    }

    bool step_sink(connection& c) {
        if (c.wr_shut) {
            return false;
        }
        for (int round = 0; round < 64 && !c.peer_eof; ++round) {
            ssize_t n = ::recv(c.fd, scratch.data(), scratch.size(), 0);
            if (n > 0) {
                c.received += uint64_t(n);
            } else if (n == 0) {
                c.peer_eof = true;
                for (int i = 0; i < 8; ++i) {
                    c.reply[i] = uint8_t(c.received >> (56 - 8 * i));
                }
            } else if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
                return true;
            } else {
                return false;
            }
        }
        if (!c.peer_eof) {
            return true;
        }
        while (c.reply_sent < 8) {
            ssize_t n = ::send(c.fd, c.reply + c.reply_sent, 8 - c.reply_sent, MSG_NOSIGNAL);
            if (n > 0) {
                c.reply_sent += std::size_t(n);
            } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
                set_interest(c, EPOLLOUT);
                return true;
            } else {
                return false;
            }
        }
        ::shutdown(c.fd, SHUT_WR);
        c.wr_shut = true;
        return false;
    }

    void run() {
        ep = epoll_create1(EPOLL_CLOEXEC);
        epoll_event le{};
        le.events = EPOLLIN | EPOLLEXCLUSIVE;
        le.data.fd = listen_fd;
        epoll_ctl(ep, EPOLL_CTL_ADD, listen_fd, &le);
        std::array<epoll_event, k_max_events> evs;
        while (!g_stop.load(std::memory_order_relaxed)) {
            int n = epoll_wait(ep, evs.data(), k_max_events, 200);
            for (int i = 0; i < n; ++i) {
                int fd = evs[i].data.fd;
                if (fd == listen_fd) {
                    accept_all();
                    continue;
                }
                auto it = conns.find(fd);
                if (it == conns.end()) {
                    continue;
                }
                connection& c = *it->second;
                bool keep = true;
                if (evs[i].events & EPOLLERR) {
                    keep = false;
                } else if (m == mode::echo) {
                    keep = step_echo(c);
                } else if (m == mode::source) {
                    keep = step_source(c);
                } else {
                    keep = step_sink(c);
                }
                if (!keep) {
                    close_conn(fd);
                }
            }
        }
        for (auto& [fd, c] : conns) {
            ::close(fd);
        }
        conns.clear();
        ::close(ep);
    }
};

bool write_ready_file(const std::string& path, int port) {
    std::string tmp = path + ".tmp";
    FILE* f = std::fopen(tmp.c_str(), "w");
    if (!f) {
        return false;
    }
    std::fprintf(f, "{\"port\":%d}\n", port);
    if (std::fclose(f) != 0) {
        return false;
    }
    return std::rename(tmp.c_str(), path.c_str()) == 0;
}

int usage() {
    std::fprintf(stderr, "usage: apprelay-testbackend --listen HOST:PORT --mode echo|sink|source "
                         "[--ready-file PATH] [--threads N]\n");
    return 2;
}

} // namespace

int main(int argc, char** argv) {
    std::string listen = "127.0.0.1:0";
    std::string mode_s = "echo";
    std::string ready;
    int threads = 1;
    for (int i = 1; i < argc; ++i) {
        std::string_view a = argv[i];
        auto next = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
        const char* v = nullptr;
        if (a == "--listen" && (v = next())) {
            listen = v;
        } else if (a == "--mode" && (v = next())) {
            mode_s = v;
        } else if (a == "--ready-file" && (v = next())) {
            ready = v;
        } else if (a == "--threads" && (v = next())) {
            threads = std::atoi(v);
        } else {
            return usage();
        }
    }
    mode m;
    if (mode_s == "echo") {
        m = mode::echo;
    } else if (mode_s == "sink") {
        m = mode::sink;
    } else if (mode_s == "source") {
        m = mode::source;
    } else {
        return usage();
    }
    if (threads < 1 || threads > 64) {
        return usage();
    }
    auto colon = listen.rfind(':');
    if (colon == std::string::npos) {
        return usage();
    }
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(uint16_t(std::atoi(listen.c_str() + colon + 1)));
    if (inet_pton(AF_INET, listen.substr(0, colon).c_str(), &sa.sin_addr) != 1) {
        std::fprintf(stderr, "testbackend: bad listen address %s\n", listen.c_str());
        return 2;
    }
    int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(lfd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(lfd, 4096) != 0) {
        std::fprintf(stderr, "testbackend: cannot listen on %s: %s\n", listen.c_str(),
                     std::strerror(errno));
        return 1;
    }
    socklen_t sl = sizeof sa;
    getsockname(lfd, reinterpret_cast<sockaddr*>(&sa), &sl);
    int port = ntohs(sa.sin_port);

    signal(SIGPIPE, SIG_IGN);
    struct sigaction act {};
    act.sa_handler = on_signal;
    sigaction(SIGTERM, &act, nullptr);
    sigaction(SIGINT, &act, nullptr);

    std::vector<std::unique_ptr<worker>> workers;
    for (int i = 0; i < threads; ++i) {
        workers.push_back(std::make_unique<worker>(lfd, m));
    }
    std::vector<std::thread> ts;
    for (auto& w : workers) {
        ts.emplace_back([&w] { w->run(); });
    }
    if (!ready.empty() && !write_ready_file(ready, port)) {
        std::fprintf(stderr, "testbackend: cannot write ready file %s\n", ready.c_str());
        g_stop.store(true);
    }
    std::fprintf(stderr, "testbackend: listening on 127.0.0.1:%d mode=%s threads=%d\n", port,
                 mode_s.c_str(), threads);
    for (auto& t : ts) {
        t.join();
    }
    uint64_t accepted = 0;
    for (auto& w : workers) {
        accepted += w->accepted;
    }
    std::fprintf(stderr, "testbackend: stopped, connections accepted=%llu\n",
                 static_cast<unsigned long long>(accepted));
    ::close(lfd);
    return 0;
}
