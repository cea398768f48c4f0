#pragma once
// Counters: defined once with an X-macro table (enum + names), bumped by one owner thread
// (a worker), read by the control thread. Single writer, so a relaxed load+store is enough and
// costs a plain add on x86; readers see a recent value, never a torn one.
#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace apprelay {

template <class Enum, std::size_t N> class counter_block {
public:
    void add(Enum e, uint64_t n = 1) noexcept {
        auto& c = _c[static_cast<std::size_t>(e)];
        c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
    }
    void set(Enum e, uint64_t v) noexcept {
        _c[static_cast<std::size_t>(e)].store(v, std::memory_order_relaxed);
    }
    uint64_t get(Enum e) const noexcept {
        return _c[static_cast<std::size_t>(e)].load(std::memory_order_relaxed);
    }
    uint64_t get(std::size_t i) const noexcept { return _c[i].load(std::memory_order_relaxed); }
    static constexpr std::size_t size() noexcept { return N; }

private:
    std::array<std::atomic<uint64_t>, N> _c{};
};

} // namespace apprelay

// Declares `enum class NAME : uint32_t {...}`, `NAME##_names` and `NAME##_block`.
#define APPRELAY_COUNTER_ENUM_ITEM(name, help) name,
#define APPRELAY_COUNTER_NAME_ITEM(name, help) std::string_view{#name},
#define APPRELAY_COUNTER_HELP_ITEM(name, help) std::string_view{help},
#define APPRELAY_DECLARE_COUNTERS(NAME, TABLE)                                                     \
    enum class NAME : uint32_t { TABLE(APPRELAY_COUNTER_ENUM_ITEM) count_ };                       \
    inline constexpr std::string_view NAME##_names[] = {TABLE(APPRELAY_COUNTER_NAME_ITEM)};        \
    inline constexpr std::string_view NAME##_help[] = {TABLE(APPRELAY_COUNTER_HELP_ITEM)};         \
    using NAME##_block = ::apprelay::counter_block<NAME, static_cast<std::size_t>(NAME::count_)>;
