// The control thread <-> worker seam of dataplane/relay/worker.hh with real threads, as the relay
// wires it (control/relay_host.cc): workers run their loops on their own threads while the
// control thread publishes snapshots through the RCU cell, wakes the workers, reclaims, reads
// their counters and finally stops them. Its main reader is ThreadSanitizer (scripts/test runs
// the unit tests under it). The worker -> control event ring needs live tunnels; its pattern is
// tested on its own in tests/unit/dataplane/core/spsc_ring_test.cc.
#include "dataplane/relay/worker.hh"

#include <arpa/inet.h>
#include <atomic>
#include <chrono>
#include <gtest/gtest.h>
#include <memory>
#include <netinet/in.h>
#include <string>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace apprelay::relay {
namespace {

// A loopback listener on a free port, as make_listeners binds them for the uring backend.
int listener() {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 &&
        (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, 16) != 0)) {
        ::close(fd);
        return -1;
    }
    return fd;
}

std::unique_ptr<const relay_config> config(uint64_t version) {
    auto s = std::make_shared<snapshot>();
    s->version = version;
    s->tenants.push_back(tenant_entry{"t", "", ""});
    s->groups.push_back(group_entry{0, "g", 1, "", {}});
    finalize(*s);
    auto c = std::make_unique<relay_config>();
    c->snap = std::move(s);
    return c;
}

// Generous for a thousand publishes even under ThreadSanitizer on a loaded machine; a worker
// that stops taking snapshots fails the test here instead of at the meson timeout.
constexpr auto k_budget = std::chrono::seconds(20);

TEST(worker, control_thread_publishes_while_workers_run_and_every_worker_moves_on) {
    constexpr std::size_t k_workers = 2;
    // Enough publishes that some land while a worker is mid-iteration and some while it sleeps
    // in io_uring; each is followed by wake() and reclaim() as in control_plane::sync_snapshot
    // and control_plane::tick.
    constexpr uint64_t k_publishes = 1000;
    config_cell cell(k_workers, config(1));
    std::vector<std::unique_ptr<worker>> workers;
    std::vector<int> fds;
    for (std::size_t i = 0; i < k_workers; ++i) {
        const int user = listener();
        const int tunnel = listener();
        ASSERT_GE(user, 0);
        ASSERT_GE(tunnel, 0);
        fds.push_back(user);
        fds.push_back(tunnel);
        workers.push_back(std::make_unique<worker>(uint16_t(i), uint16_t(k_workers), &cell));
        workers.back()->set_listeners(io::listen_spec{.fd = user}, io::listen_spec{.fd = tunnel});
    }
    std::atomic<bool> stop{false};
    std::atomic<int> failed{0};
    std::vector<std::thread> threads;
    for (std::size_t i = 0; i < k_workers; ++i) {
        threads.emplace_back([&, i] {
            std::string why;
            if (!workers[i]->run(stop, &why)) {
                ADD_FAILURE() << "worker " << i << ": " << why;
                failed.fetch_add(1);
            }
        });
    }

    const auto deadline = std::chrono::steady_clock::now() + k_budget;
    // The control thread reads the counters while their worker bumps them (stats, /metrics): a
    // single writer's counter never goes backwards for its reader.
    std::vector<uint64_t> iterations(k_workers, 0);
    uint64_t backwards = 0;
    for (uint64_t v = 2; v <= k_publishes + 1 && failed.load() == 0; ++v) {
        cell.publish(config(v));
        for (const auto& w : workers) {
            w->wake();
        }
        cell.reclaim();
        for (std::size_t i = 0; i < k_workers; ++i) {
            const uint64_t n = workers[i]->counters().get(relay_counter::loop_iterations);
            backwards += n < iterations[i] ? 1 : 0;
            iterations[i] = n;
        }
        if (v % 8 == 0) {
            std::this_thread::sleep_for(std::chrono::microseconds(100)); // let workers sleep
        }
    }
    // Every worker refreshes at the top of its next iteration: once each has announced the last
    // generation, nothing is left to reclaim.
    std::size_t pending = cell.reclaim();
    while (pending != 0 && failed.load() == 0 && std::chrono::steady_clock::now() < deadline) {
        for (const auto& w : workers) {
            w->wake();
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        pending = cell.reclaim();
    }
    EXPECT_EQ(pending, 0u) << "a worker never moved past an old snapshot";
    EXPECT_EQ(backwards, 0u);
    for (const auto& w : workers) {
        EXPECT_GE(w->counters().get(relay_counter::config_updates), 1u);
        EXPECT_LE(w->counters().get(relay_counter::config_updates), k_publishes);
    }
    EXPECT_EQ(cell.writer_view()->snap->version, k_publishes + 1);

    stop.store(true);
    for (const auto& w : workers) {
        w->wake();
    }
    for (auto& t : threads) {
        t.join();
    }
    EXPECT_EQ(failed.load(), 0);
    for (const auto& w : workers) {
        EXPECT_GT(w->counters().get(relay_counter::loop_iterations), 0u);
    }
    for (int fd : fds) {
        ::close(fd);
    }
}

} // namespace
} // namespace apprelay::relay
