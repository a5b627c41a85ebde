// The activation command (deploy/activation.hpp): its text runs under /bin/sh against real
// files, and its output is parsed into per-step outcomes for every way it can end.
#include "guardia/core/shell.hpp"
#include "guardia/deploy/activation.hpp"

#include <doctest/doctest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include <sys/wait.h>
#include <unistd.h>

using namespace guardia::deploy;

TEST_CASE("parse_activation: success with and without a restart") {
    auto o = parse_activation("VERIFIED\nSHUTDOWN_EXIT=0\nACTIVATED\n", 0, true);
    CHECK_FALSE(o.failed.has_value());
    CHECK(o.verified);
    CHECK(o.activated);
    CHECK(o.shutdown_exit == 0);
    CHECK(o.live_may_have_changed);
    o = parse_activation("VERIFIED\nACTIVATED\n", 0, false);
    CHECK_FALSE(o.failed.has_value());
    CHECK(o.activated);
    CHECK_FALSE(o.shutdown_exit.has_value());
}

TEST_CASE("parse_activation: verification failures change nothing live") {
    // A mismatch names the file and its remote digest.
    auto o = parse_activation("MISMATCH 1 abcdef\n", 92, true);
    CHECK(o.failed == ActivationStep::transfer);
    CHECK(o.failed_exit == 92);
    CHECK(o.mismatch_index == 1u);
    CHECK(o.mismatch_sha256 == "abcdef");
    CHECK_FALSE(o.verified);
    CHECK_FALSE(o.live_may_have_changed);
    // No hashing tool (exit 91), or killed while hashing (a signal): no marker at all.
    o = parse_activation("", 91, false);
    CHECK(o.failed == ActivationStep::transfer);
    CHECK(o.failed_exit == 91);
    CHECK_FALSE(o.mismatch_index.has_value());
    CHECK_FALSE(o.live_may_have_changed);
    o = parse_activation("", std::nullopt, true);
    CHECK(o.failed == ActivationStep::transfer);
    CHECK_FALSE(o.failed_exit.has_value());
    CHECK_FALSE(o.live_may_have_changed);
}

TEST_CASE("parse_activation: the shutdown's own exit code, and a killed shutdown") {
    auto o = parse_activation("VERIFIED\nSHUTDOWN_EXIT=7\n", 43, true);
    CHECK(o.failed == ActivationStep::shutdown);
    CHECK(o.failed_exit == 7);  // the operator command's, not the script's 43
    CHECK(o.live_may_have_changed);
    CHECK_FALSE(o.activated);
    o = parse_activation("VERIFIED\n", std::nullopt, true);
    CHECK(o.failed == ActivationStep::shutdown);
    CHECK_FALSE(o.failed_exit.has_value());
    CHECK(o.live_may_have_changed);
}

TEST_CASE("parse_activation: a failed rename, with and without a restart") {
    auto o = parse_activation("VERIFIED\nSHUTDOWN_EXIT=0\n", 42, true);
    CHECK(o.failed == ActivationStep::activate);
    CHECK(o.failed_exit == 42);
    CHECK(o.shutdown_exit == 0);
    CHECK(o.live_may_have_changed);
    o = parse_activation("VERIFIED\n", 42, false);
    CHECK(o.failed == ActivationStep::activate);
    CHECK(o.live_may_have_changed);
}

TEST_CASE("parse_activation: the startup's own exit code or signal") {
    auto o = parse_activation("VERIFIED\nSHUTDOWN_EXIT=0\nACTIVATED\n", 3, true);
    CHECK(o.failed == ActivationStep::startup);
    CHECK(o.failed_exit == 3);
    CHECK(o.activated);
    // 42 and 43 after ACTIVATED are the startup command's own codes.
    o = parse_activation("VERIFIED\nSHUTDOWN_EXIT=0\nACTIVATED\n", 42, true);
    CHECK(o.failed == ActivationStep::startup);
    CHECK(o.failed_exit == 42);
    o = parse_activation("VERIFIED\nSHUTDOWN_EXIT=0\nACTIVATED\n", std::nullopt, true);
    CHECK(o.failed == ActivationStep::startup);
    CHECK_FALSE(o.failed_exit.has_value());
}

TEST_CASE("activation_lost: the step after the last marker seen failed; live files may have changed") {
    auto o = activation_lost("", true);  // cut before VERIFIED arrived: it may have run on anyway
    CHECK(o.failed == ActivationStep::transfer);
    CHECK(o.live_may_have_changed);
    o = activation_lost("VERIFIED\n", true);  // the shutdown's deadline, or the connection
    CHECK(o.failed == ActivationStep::shutdown);
    CHECK(o.verified);
    CHECK_FALSE(o.failed_exit.has_value());
    o = activation_lost("VERIFIED\nSHUTDOWN_EXIT=0\n", true);
    CHECK(o.failed == ActivationStep::activate);
    o = activation_lost("VERIFIED\nSHUTDOWN_EXIT=0\nACTIVATED\n", true);
    CHECK(o.failed == ActivationStep::startup);
    CHECK(o.live_may_have_changed);
    o = activation_lost("VERIFIED\n", false);
    CHECK(o.failed == ActivationStep::activate);
    o = activation_lost("VERIFIED\nACTIVATED\n", false);  // all done, only the answer lost
    CHECK_FALSE(o.failed.has_value());
    CHECK(o.live_may_have_changed);
}

namespace {

struct Run {
    std::string out;
    int status = -1;
};

Run run_sh(const std::string& script) {
    FILE* p = ::popen(("/bin/sh -c " + guardia::shell_quote(script) + " 2>/dev/null").c_str(), "r");
    REQUIRE(p != nullptr);
    Run r;
    char buf[256];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
    const int raw = ::pclose(p);
    r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
    return r;
}

std::string slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// sha256 of "abc" and of "abd".
const std::string kAbc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
const std::string kAbd = "a52d159f262b2c6ddb724a61840befc36eb30c88877a4030b65cbe86298449c9";

struct Dir {
    std::string path;
    Dir() {
        char tmpl[] = "/tmp/guardia-activation-XXXXXX";
        REQUIRE(::mkdtemp(tmpl) != nullptr);
        path = tmpl;
        std::ofstream(path + "/app.jar") << "old";
        std::ofstream(path + "/.guardia-stage.app.jar.x y") << "abc";
    }
    ~Dir() { std::filesystem::remove_all(path); }
    std::vector<StagedFile> files(const std::string& sha) const {
        StagedFile f;
        f.staging_path = path + "/.guardia-stage.app.jar.x y";
        f.final_path = path + "/app.jar";
        f.sha256 = sha;
        return {f};
    }
};

}  // namespace

TEST_CASE("activation_script under /bin/sh: every outcome, parsed back") {
    const std::string marker = "printf 'm\\n' > marker.tmp && mv -f -T -- marker.tmp marker";
    SUBCASE("success: shutdown, rename, marker, startup") {
        Dir d;
        const std::string stop = "echo stopped > " + guardia::shell_quote(d.path + "/log") + "; echo noise";
        const std::string start = "echo started >> " + guardia::shell_quote(d.path + "/log");
        auto r = run_sh("cd " + guardia::shell_quote(d.path) + " && " +
                        activation_script(d.files(kAbc), &stop, &start, marker));
        CHECK(r.status == 0);
        CHECK(r.out == "VERIFIED\nSHUTDOWN_EXIT=0\nACTIVATED\n");  // operator output kept off stdout
        CHECK_FALSE(parse_activation(r.out, r.status, true).failed.has_value());
        CHECK(slurp(d.path + "/app.jar") == "abc");
        CHECK(slurp(d.path + "/log") == "stopped\nstarted\n");
        CHECK(slurp(d.path + "/marker") == "m\n");
        CHECK_FALSE(std::filesystem::exists(d.path + "/.guardia-stage.app.jar.x y"));
    }
    SUBCASE("mismatch: staged file removed, shutdown never run, live file untouched") {
        Dir d;
        const std::string stop = "echo stopped > " + guardia::shell_quote(d.path + "/log");
        auto r = run_sh("cd " + guardia::shell_quote(d.path) + " && " +
                        activation_script(d.files(kAbd), &stop, &stop, marker));
        CHECK(r.status == 92);
        auto o = parse_activation(r.out, r.status, true);
        CHECK(o.failed == ActivationStep::transfer);
        CHECK(o.mismatch_index == 0u);
        CHECK(o.mismatch_sha256 == kAbc);
        CHECK(slurp(d.path + "/app.jar") == "old");
        CHECK_FALSE(std::filesystem::exists(d.path + "/log"));
        CHECK_FALSE(std::filesystem::exists(d.path + "/.guardia-stage.app.jar.x y"));
    }
    SUBCASE("shutdown fails with its own code (an exit in its text stays in its subshell)") {
        Dir d;
        const std::string stop = "exit 7 # a trailing comment";
        const std::string start = "true";
        auto r = run_sh("cd " + guardia::shell_quote(d.path) + " && " +
                        activation_script(d.files(kAbc), &stop, &start, marker));
        CHECK(r.status == 43);
        auto o = parse_activation(r.out, r.status, true);
        CHECK(o.failed == ActivationStep::shutdown);
        CHECK(o.failed_exit == 7);
        CHECK(slurp(d.path + "/app.jar") == "old");
    }
    SUBCASE("the rename fails: a directory where the file goes") {
        Dir d;
        std::filesystem::remove(d.path + "/app.jar");
        std::filesystem::create_directory(d.path + "/app.jar");
        const std::string ok = "true";
        auto r = run_sh("cd " + guardia::shell_quote(d.path) + " && " +
                        activation_script(d.files(kAbc), &ok, &ok, marker));
        CHECK(r.status == 42);
        auto o = parse_activation(r.out, r.status, true);
        CHECK(o.failed == ActivationStep::activate);
        CHECK(std::filesystem::is_directory(d.path + "/app.jar"));
    }
    SUBCASE("startup fails with its own code") {
        Dir d;
        const std::string ok = "true", start = "exit 5";
        auto r = run_sh("cd " + guardia::shell_quote(d.path) + " && " +
                        activation_script(d.files(kAbc), &ok, &start, marker));
        CHECK(r.status == 5);
        auto o = parse_activation(r.out, r.status, true);
        CHECK(o.failed == ActivationStep::startup);
        CHECK(o.failed_exit == 5);
        CHECK(slurp(d.path + "/app.jar") == "abc");
    }
    SUBCASE("no restart: verify and rename only") {
        Dir d;
        auto r = run_sh("cd " + guardia::shell_quote(d.path) + " && " +
                        activation_script(d.files(kAbc), nullptr, nullptr, marker));
        CHECK(r.status == 0);
        CHECK(r.out == "VERIFIED\nACTIVATED\n");
        CHECK_FALSE(parse_activation(r.out, r.status, false).failed.has_value());
        CHECK(slurp(d.path + "/app.jar") == "abc");
    }
}
