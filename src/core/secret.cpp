#include "guardia/core/secret.hpp"

#include <openssl/crypto.h>
#include <sys/stat.h>

#include <fstream>
#include <sstream>
#include <stdexcept>

namespace guardia {
namespace {
void wipe(std::string& s) noexcept {
    if (!s.empty()) OPENSSL_cleanse(s.data(), s.size());
    s.clear();
}
}  // namespace

Secret::Secret(Secret&& other) noexcept : value_(std::move(other.value_)) { wipe(other.value_); }

Secret& Secret::operator=(Secret other) noexcept {
    wipe(value_);
    value_.swap(other.value_);
    return *this;
}

Secret::~Secret() { wipe(value_); }

Secret read_secret_file(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0)
        throw std::runtime_error("secret file " + path + ": cannot stat");
    if ((st.st_mode & 077) != 0)
        throw std::runtime_error("secret file " + path +
                                 ": readable by group or others; chmod 600 it");
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("secret file " + path + ": cannot open");
    std::ostringstream buffer;
    buffer << in.rdbuf();
    std::string value = buffer.str();
    if (!value.empty() && value.back() == '\n') value.pop_back();
    Secret secret(std::move(value));
    return secret;
}

}  // namespace guardia
