#pragma once
// apprelayctl's command tree (CLI11) and its dispatch. One definition serves --help, the bash
// completion script and the man page (docs.hh), so none of them can drift from the others.
#include "control/ctl/docs.hh"

#include <CLI/CLI.hpp>
#include <iosfwd>
#include <memory>

namespace apprelay::ctl {

class command_line {
public:
    // Builds the whole tree; the object owns the storage its options parse into.
    command_line();
    ~command_line();
    command_line(const command_line&) = delete;
    command_line& operator=(const command_line&) = delete;

    const CLI::App& app() const;
    // The values in the tree that name objects on the relay (bash_completion's names).
    const value_names& names() const;

    // Parses argv and runs the command (once per object): what main() does, with its streams
    // given. Returns the exit code (client.hh exit_code).
    int run(int argc, const char* const* argv, std::ostream& out, std::ostream& err);

private:
    struct impl;
    std::unique_ptr<impl> _impl;
};

} // namespace apprelay::ctl
