#pragma once
// Documentation generated from apprelayctl's command tree (cli.hh): the bash completion script
// and the man page. Both walk the same CLI::App that parses the command line.
#include <CLI/CLI.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace apprelay::ctl {

// One command of the tree: its words after the program name ("groups create"; empty for the
// top level) and its CLI11 node.
struct command_node {
    std::string path;
    const CLI::App* app;
};
// Every node, parents before children, in definition order.
std::vector<command_node> command_nodes(const CLI::App& root);

// The values an option or positional accepts when it is checked against a fixed set
// (CLI::IsMember), in order; empty otherwise.
std::vector<std::string> option_choices(const CLI::Option& opt);

// A bash completion script (`complete -F _apprelayctl apprelayctl`): subcommands, every
// command's options (its own and, as the tree falls through, its parents'), fixed choices and
// file names for option values.
std::string bash_completion(const CLI::App& root);

// apprelayctl(1) in man(7) roff: NAME, SYNOPSIS, DESCRIPTION, GLOBAL OPTIONS, COMMANDS (each
// with its arguments and options), EXIT STATUS, FILES, ENVIRONMENT, EXAMPLES, SEE ALSO.
std::string man_page(const CLI::App& root, std::string_view version);

} // namespace apprelay::ctl
