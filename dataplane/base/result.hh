#pragma once
// result<T>: a value or an error (errc + a static detail string). C++20, no exceptions, no
// allocation: the detail is always a string literal so error paths on the data plane stay cheap.
// Callers that need numbers in a message format them where they know the object (tunnel id...).
#include "dataplane/base/errc.hh"

#include <cassert>
#include <string_view>
#include <type_traits>
#include <utility>

namespace apprelay {

struct error {
    errc code = errc::ok;
    std::string_view detail{}; // string literal or other static storage, never owned

    constexpr error() = default;
    constexpr error(errc c, std::string_view d = {}) : code(c), detail(d) {}
};

template <class T> class [[nodiscard]] result {
public:
    result(const T& v) : _ok(true) { new (&_value) T(v); }
    result(T&& v) : _ok(true) { new (&_value) T(std::move(v)); }
    result(error e) : _ok(false), _error(e) { assert(e.code != errc::ok); }
    result(errc c) : result(error(c)) {}

    result(const result& o) : _ok(o._ok) {
        if (_ok) {
            new (&_value) T(o._value);
        } else {
            _error = o._error;
        }
    }
    result(result&& o) noexcept(std::is_nothrow_move_constructible_v<T>) : _ok(o._ok) {
        if (_ok) {
            new (&_value) T(std::move(o._value));
        } else {
            _error = o._error;
        }
    }
    result& operator=(result o) noexcept(std::is_nothrow_move_constructible_v<T>) {
        this->~result();
        new (this) result(std::move(o));
        return *this;
    }
    ~result() {
        if (_ok) {
            _value.~T();
        }
    }

    bool ok() const noexcept { return _ok; }
    explicit operator bool() const noexcept { return _ok; }
    T& value() & {
        assert(_ok);
        return _value;
    }
    const T& value() const& {
        assert(_ok);
        return _value;
    }
    T&& value() && {
        assert(_ok);
        return std::move(_value);
    }
    T& operator*() & { return value(); }
    const T& operator*() const& { return value(); }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }
    const error& err() const noexcept {
        assert(!_ok);
        return _error;
    }
    errc code() const noexcept { return _ok ? errc::ok : _error.code; }

private:
    bool _ok;
    union {
        T _value;
        error _error;
    };
};

template <> class [[nodiscard]] result<void> {
public:
    result() = default;
    result(error e) : _error(e) {}
    result(errc c) : _error(c) {}
    bool ok() const noexcept { return _error.code == errc::ok; }
    explicit operator bool() const noexcept { return ok(); }
    const error& err() const noexcept { return _error; }
    errc code() const noexcept { return _error.code; }

private:
    error _error{};
};

inline result<void> ok_result() {
    return {};
}

} // namespace apprelay
