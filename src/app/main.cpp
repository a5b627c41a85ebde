// The `guardia` executable: a thin command-line layer over the engine library.
#include "guardia/version.hpp"

#include <cstdio>
#include <cstring>
#include <string_view>

namespace {

int usage(std::FILE* out) {
    std::fprintf(out,
                 "usage: guardia <command> [options]\n"
                 "\n"
                 "commands:\n"
                 "  version     print the version\n"
                 "  help        show this help\n"
                 "\n"
                 "The rollout commands (deploy, exec, serve) are described in docs/ and arrive\n"
                 "with the node pipeline and rollout engine.\n");
    return out == stderr ? 2 : 0;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) return usage(stderr);
    const std::string_view command = argv[1];
    if (command == "version" || command == "--version") {
        std::printf("guardia %s\n", guardia::version());
        return 0;
    }
    if (command == "help" || command == "--help" || command == "-h") return usage(stdout);
    std::fprintf(stderr, "guardia: unknown command '%s'\n", argv[1]);
    return usage(stderr);
}
