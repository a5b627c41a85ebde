// guardia-bench-sanitizer: how long the command sanitizer takes to judge a command.
//
//   guardia-bench-sanitizer [CORPUS_DIR]
//
// Prints, for each family of pathological inputs, the CPU time of one judgment at 1, 2, 4 and
// 8 KiB (linear growth doubles the time with the size), and the mean time per command of the
// corpus (test/data/sanitizer by default). CPU time of the calling thread, best of 5 runs: a
// shared machine's other work does not count.
#include "guardia/core/sanitizer.hpp"

#include <time.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

namespace {

double cpu_ms() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
}

double best_of(int runs, const std::function<void()>& f) {
    double best = 1e300;
    for (int i = 0; i < runs; ++i) {
        double t0 = cpu_ms();
        f();
        best = std::min(best, cpu_ms() - t0);
    }
    return best;
}

std::string repeat(const std::string& unit, std::size_t bytes) {
    std::string s;
    while (s.size() + unit.size() <= bytes) s += unit;
    return s;
}

std::string nest(const std::string& open, const std::string& close, std::size_t bytes) {
    std::string core = "true";
    while (core.size() + open.size() + close.size() <= bytes) core = open + core + close;
    return core;
}

std::vector<std::string> load(const std::string& path) {
    std::ifstream in(path);
    std::vector<std::string> out;
    std::string line, block;
    bool in_block = false;
    while (std::getline(in, line)) {
        if (in_block) {
            if (line == ">>>") {
                out.push_back(block);
                in_block = false;
            } else {
                block += (block.empty() ? "" : "\n") + line;
            }
        } else if (line == "<<<") {
            in_block = true;
            block.clear();
        } else if (!line.empty() && line[0] != '#') {
            out.push_back(line);
        }
    }
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    std::string corpus = argc > 1 ? argv[1] : "test/data/sanitizer";
    struct Family {
        const char* name;
        std::function<std::string(std::size_t)> make;
    };
    const std::vector<Family> families = {
        {"a;a;a;... (many commands)", [](std::size_t n) { return repeat("a;", n); }},
        {"echo $(echo x|sh)|... chains", [](std::size_t n) { return repeat("echo $(echo x|sh)|", n) + "true"; }},
        {"nested $( ... )|sh", [](std::size_t n) { return nest("echo $(", ")|sh", std::min<std::size_t>(n, 40 * 11)); }},
        {"nested { ...; }", [](std::size_t n) { return nest("{ ", "; }", std::min<std::size_t>(n, 150 * 5)); }},
        {"sudo sudo ... ls", [](std::size_t n) { return repeat("sudo ", n) + "ls"; }},
        {"cd /srv/a$X; ... (unknown cwds)", [](std::size_t n) { return repeat("cd /srv/a$X; ", n) + "ls"; }},
        {"here-documents", [](std::size_t n) { return repeat("cat <<E\nx $(y)\nE\n", n); }},
        {"quoting of every kind", [](std::size_t n) { return "echo " + repeat("'x'\"y$z\"$'\\x41'\\ ", n); }},
        {"find -exec sh -c ...", [](std::size_t n) { return repeat("find /srv/app -exec sh -c 'true' {} \\; ", n); }},
    };
    std::printf("%-34s %9s %9s %9s %9s\n", "input family (ms per judgment)", "1 KiB", "2 KiB", "4 KiB", "8 KiB");
    for (const auto& f : families) {
        std::printf("%-34s", f.name);
        for (std::size_t kib : {1, 2, 4, 8}) {
            std::string input = f.make(kib * 1024);
            double ms = best_of(5, [&] { (void)guardia::sanitize_command(input); });
            std::printf(" %9.3f", ms);
        }
        std::printf("\n");
    }
    for (const char* file : {"dangerous.txt", "everyday.txt"}) {
        auto commands = load(corpus + "/" + file);
        if (commands.empty()) {
            std::fprintf(stderr, "cannot read %s/%s\n", corpus.c_str(), file);
            return 1;
        }
        double ms = best_of(5, [&] {
            for (const auto& c : commands) (void)guardia::sanitize_command(c);
        });
        std::printf("corpus %-15s %5zu commands, %.4f ms per command\n", file, commands.size(),
                    ms / static_cast<double>(commands.size()));
    }
    return 0;
}
