// Fuzz target: the command sanitizer, guardia::sanitize_command (core/sanitizer.hpp).
//
// Properties:
//  1. no crash, no sanitizer report, no leak, for any bytes;
//  2. bounded time: each input is judged within a CPU-time budget. The requirement is
//     < 10 ms per command; under ASan/UBSan and coverage instrumentation code runs several
//     times slower, so the default budget here is 50 ms of thread CPU time
//     (GUARDIA_FUZZ_SANITIZER_BUDGET_MS overrides it). libFuzzer's -timeout backs this up
//     for a real hang.
//  3. refusal stable under re-quoting of literal words: see REQUOTE below.
#include "guardia/core/sanitizer.hpp"

#include "fuzz_common.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

// ---- REQUOTE: the third property, "refusal stable under re-quoting of literal words" ----
// guardia::shell::requote_literal_words rewrites a command with every plain literal word in
// single quotes (rm -> 'rm'), nullopt when it does not parse. The sanitizer must refuse the
// rewritten command exactly when it refuses the original.
#include "guardia/core/shell_syntax.hpp"

namespace {

// Judges `command` within the time budget; true if accepted. An input over the budget is
// judged again: a slow input is slow every time, while a hiccup of the machine (a virtual
// CPU's stolen time counts as the thread's CPU time in the guest) is not. It fails only if the
// fastest of three judgements is still over the budget.
bool judge(std::string_view command) {
    static const double budget =
        guardia::fuzz::budget_ms("GUARDIA_FUZZ_SANITIZER_BUDGET_MS", 50.0);
    double fastest = 0;
    bool accepted = false;
    for (int attempt = 0; attempt < 3; ++attempt) {
        const double start = guardia::fuzz::thread_cpu_ms();
        accepted = guardia::sanitize_command(command).has_value();
        const double spent = guardia::fuzz::thread_cpu_ms() - start;
        fastest = attempt == 0 ? spent : std::min(fastest, spent);
        if (fastest <= budget) return accepted;
    }
    guardia::fuzz::fail("sanitize_command judges each command in bounded time",
                        "took at least " + std::to_string(fastest) + " ms of CPU (3 tries) for " +
                            std::to_string(command.size()) + " bytes (budget " +
                            std::to_string(budget) + " ms)");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view command(reinterpret_cast<const char*>(data), size);
    const bool accepted = judge(command);
    (void)guardia::is_system_path(command);

    if (const std::optional<std::string> requoted = guardia::shell::requote_literal_words(command)) {
        if (judge(*requoted) != accepted)
            guardia::fuzz::fail("refusal stable under re-quoting of literal words",
                                std::string(accepted ? "accepted" : "refused") +
                                    " the original but not its re-quoted form: " + *requoted);
    }
    return 0;
}
