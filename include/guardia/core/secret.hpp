// A password or key passphrase. It cannot be streamed or formatted, so it cannot end up in
// a log line by accident, and its memory is wiped when it dies.
#pragma once

#include <string>
#include <string_view>

namespace guardia {

class Secret {
public:
    Secret() = default;
    explicit Secret(std::string value) : value_(std::move(value)) {}
    Secret(const Secret& other) : value_(other.value_) {}
    Secret(Secret&& other) noexcept;
    Secret& operator=(Secret other) noexcept;
    ~Secret();

    bool empty() const noexcept { return value_.empty(); }
    // The only way to read the value: named so every use is easy to find in review.
    const std::string& reveal() const noexcept { return value_; }

private:
    std::string value_;
};

// Reads a secret from a file, dropping one trailing newline. The file must not be readable
// by group or others; a looser mode is refused (start-up error, thrown).
Secret read_secret_file(const std::string& path);

}  // namespace guardia
