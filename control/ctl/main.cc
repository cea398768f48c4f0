// apprelayctl: the command tree and its dispatch live in cli.cc, requests in client.cc, output
// in output.cc, the completion script and man page in docs.cc.
#include "control/ctl/cli.hh"

#include <iostream>

int main(int argc, char** argv) {
    apprelay::ctl::command_line cli;
    return cli.run(argc, argv, std::cout, std::cerr);
}
