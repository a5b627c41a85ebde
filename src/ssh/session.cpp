#include "detail/key_signer.hpp"
#include "detail/session_impl.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <sstream>

namespace guardia::ssh {

namespace asio = boost::asio;
using asio::ip::tcp;

namespace {

std::atomic<std::size_t> g_open_sessions{0};

void init_libssh2_once() {
    static std::once_flag once;
    std::call_once(once, [] {
        if (libssh2_init(0) != 0) throw std::runtime_error("libssh2_init failed");
    });
}

// sshd leaves Nagle on for non-interactive sessions and delays its ACKs; re-arming
// TCP_QUICKACK after every read removes a ~40 ms stall per round trip (LIBSSH2-NOTES.md).
LIBSSH2_RECV_FUNC(recv_with_quickack) {
    (void)abstract;
    ssize_t n = ::recv(socket, buffer, length, flags);
    if (n < 0) return -errno;
    if (n > 0) {
        int one = 1;
        ::setsockopt(socket, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
    }
    return n;
}

// MSG_NOSIGNAL: a peer that went away must give EPIPE, not kill the process with SIGPIPE.
LIBSSH2_SEND_FUNC(send_nosignal) {
    (void)abstract;
    ssize_t n = ::send(socket, buffer, length, flags | MSG_NOSIGNAL);
    if (n < 0) return -errno;
    return n;
}

// libssh2's allocator hooks: `abstract` points at the session's Impl (its arena).
LIBSSH2_ALLOC_FUNC(arena_alloc) { return static_cast<Session::Impl*>(*abstract)->arena.allocate(count); }
LIBSSH2_REALLOC_FUNC(arena_realloc) {
    return static_cast<Session::Impl*>(*abstract)->arena.reallocate(ptr, count);
}
LIBSSH2_FREE_FUNC(arena_free) { static_cast<Session::Impl*>(*abstract)->arena.deallocate(ptr); }

LIBSSH2_USERAUTH_KBDINT_RESPONSE_FUNC(kbdint_answer) {
    (void)name;
    (void)name_len;
    (void)instruction;
    (void)instruction_len;
    auto* impl = static_cast<Session::Impl*>(*abstract);
    // Answer hidden prompts with the password (PAM's usual "Password:" exchange). A prompt
    // that echoes (a user name, a one-time code's label) gets an empty answer: the password
    // must never be typed where it would be shown.
    for (int i = 0; i < num_prompts; ++i) {
        if (impl == nullptr || impl->kbdint_password == nullptr || prompts[i].echo != 0) {
            responses[i].text = nullptr;
            responses[i].length = 0;
            continue;
        }
        const std::string& pw = impl->kbdint_password->reveal();
        // libssh2 frees the answers through the session's allocator.
        auto* copy = static_cast<char*>(impl->arena.allocate(pw.size() + 1));
        if (copy != nullptr) {
            std::memcpy(copy, pw.data(), pw.size() + 1);
            responses[i].text = copy;
            responses[i].length = static_cast<unsigned int>(pw.size());
        }
    }
}

LIBSSH2_USERAUTH_PUBLICKEY_SIGN_FUNC(sign_with_parsed_key) {
    const auto* signer = static_cast<const detail::KeySigner*>(*abstract);
    std::string signature = signer->sign(data, data_len);
    if (signature.empty()) return -1;
    // libssh2 frees it through the session's allocator.
    auto* impl = static_cast<Session::Impl*>(*libssh2_session_abstract(session));
    *sig = static_cast<unsigned char*>(impl->arena.allocate(signature.size()));
    if (*sig == nullptr) return -1;
    std::memcpy(*sig, signature.data(), signature.size());
    *sig_len = signature.size();
    return 0;
}

// The key's algorithm name is the first string of its wire blob.
std::string key_type_of_blob(std::string_view blob) {
    if (blob.size() < 4) return {};
    auto len = (std::uint32_t(std::uint8_t(blob[0])) << 24) |
               (std::uint32_t(std::uint8_t(blob[1])) << 16) |
               (std::uint32_t(std::uint8_t(blob[2])) << 8) | std::uint32_t(std::uint8_t(blob[3]));
    if (len > blob.size() - 4) return {};
    return std::string(blob.substr(4, len));
}

// Host-key algorithms libssh2 1.10 can verify, in our order of preference.
constexpr const char* kHostKeyAlgorithms[] = {
    "ssh-ed25519",  "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "rsa-sha2-512", "rsa-sha2-256",        "ssh-rsa",
};

// Method names of one kind (LIBSSH2_METHOD_*) that this libssh2 supports, in its own order.
// Only such names may be passed to libssh2_session_method_pref: libssh2 1.10 corrupts memory
// (overlapping memcpy) when it drops unsupported ones.
std::vector<std::string> supported_methods(LIBSSH2_SESSION* session, int method_type) {
    std::vector<std::string> supported;
    const char** algs = nullptr;
    int n = libssh2_session_supported_algs(session, method_type, &algs);
    for (int i = 0; i < n; ++i) supported.emplace_back(algs[i]);
    if (algs != nullptr) libssh2_free(session, static_cast<void*>(algs));
    return supported;
}

std::string comma_list(const std::vector<std::string>& names) {
    std::string list;
    for (const auto& name : names) {
        if (!list.empty()) list += ',';
        list += name;
    }
    return list;
}

// Ciphers and MACs cheapest per byte first, every one of them secure. libssh2 1.10 offers
// aes128-ctr + hmac-sha2-256 first anyway (AES instructions; SHA instructions for the MAC), so
// there this changes nothing. libssh2 1.11 would pick chacha20-poly1305, which it implements in
// portable C (35 % of Guardia's CPU for a 1 MiB deploy, measured): AES-GCM goes through
// OpenSSL in one pass over each packet instead.
constexpr const char* kCipherPreference[] = {
    "aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes192-ctr", "aes256-ctr",
};
constexpr const char* kMacPreference[] = {
    "hmac-sha2-256-etm@openssh.com", "hmac-sha2-256", "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-512",
};

// `preferred` first (those supported), then everything else this libssh2 supports in its own
// order, so no server that negotiated before is refused now.
template <std::size_t N>
std::string method_preference(LIBSSH2_SESSION* session, int method_type,
                              const char* const (&preferred)[N]) {
    const auto supported = supported_methods(session, method_type);
    std::vector<std::string> order;
    for (const char* name : preferred)
        if (std::find(supported.begin(), supported.end(), name) != supported.end())
            order.emplace_back(name);
    for (const auto& name : supported)
        if (std::find(order.begin(), order.end(), name) == order.end()) order.push_back(name);
    return comma_list(order);
}

// Sets the cipher and MAC preferences for both directions. The lists depend only on the
// libssh2 in use, so they are built once per process.
void prefer_cheap_methods(Session::Impl& impl, LIBSSH2_SESSION* s) {
    static const std::string ciphers =
        method_preference(s, LIBSSH2_METHOD_CRYPT_CS, kCipherPreference);
    static const std::string macs = method_preference(s, LIBSSH2_METHOD_MAC_CS, kMacPreference);
    for (auto [type, list] : {std::pair{LIBSSH2_METHOD_CRYPT_CS, &ciphers},
                              std::pair{LIBSSH2_METHOD_CRYPT_SC, &ciphers},
                              std::pair{LIBSSH2_METHOD_MAC_CS, &macs},
                              std::pair{LIBSSH2_METHOD_MAC_SC, &macs}}) {
        if (!list->empty() && libssh2_session_method_pref(s, type, list->c_str()) != 0 &&
            impl.logger)
            impl.logger->debug("{}: method preference '{}' refused by libssh2", impl.peer, *list);
    }
}

// Known key types first, so a host we know by its ECDSA key is not asked for ed25519 and then
// reported as "unknown" (OpenSSH orders the same way).
std::string hostkey_preference(LIBSSH2_SESSION* session,
                               const std::vector<std::string>& known_types) {
    const auto supported = supported_methods(session, LIBSSH2_METHOD_HOSTKEY);
    std::vector<std::string> order;
    auto add = [&](const std::string& alg) {
        if (std::find(supported.begin(), supported.end(), alg) != supported.end() &&
            std::find(order.begin(), order.end(), alg) == order.end())
            order.push_back(alg);
    };
    for (const auto& t : known_types) {
        if (t == "ssh-rsa") {
            add("rsa-sha2-512");
            add("rsa-sha2-256");
        }
        add(t);
    }
    for (const char* alg : kHostKeyAlgorithms) add(alg);
    std::string pref = comma_list(order);
    return pref;
}

std::vector<std::string> split_methods(const char* list) {
    std::vector<std::string> out;
    if (list == nullptr) return out;
    std::stringstream ss(list);
    std::string item;
    while (std::getline(ss, item, ','))
        if (!item.empty()) out.push_back(item);
    return out;
}

bool offered(const std::vector<std::string>& methods, std::string_view m) {
    return std::find(methods.begin(), methods.end(), m) != methods.end();
}

}  // namespace

std::string format_duration(std::chrono::milliseconds d) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3g s", static_cast<double>(d.count()) / 1000.0);
    return buf;
}

bool is_transport_failure(long rc) noexcept {
    switch (rc) {
        case LIBSSH2_ERROR_SOCKET_NONE:
        case LIBSSH2_ERROR_BANNER_RECV:
        case LIBSSH2_ERROR_BANNER_SEND:
        case LIBSSH2_ERROR_INVALID_MAC:
        case LIBSSH2_ERROR_KEX_FAILURE:
        case LIBSSH2_ERROR_SOCKET_SEND:
        case LIBSSH2_ERROR_KEY_EXCHANGE_FAILURE:
        case LIBSSH2_ERROR_TIMEOUT:
        case LIBSSH2_ERROR_DECRYPT:
        case LIBSSH2_ERROR_SOCKET_DISCONNECT:
        case LIBSSH2_ERROR_PROTO:
        case LIBSSH2_ERROR_SOCKET_TIMEOUT:
        case LIBSSH2_ERROR_SOCKET_RECV:
        case LIBSSH2_ERROR_ENCRYPT:
        case LIBSSH2_ERROR_BAD_SOCKET:
        case LIBSSH2_ERROR_ALLOC:
        case LIBSSH2_ERROR_BAD_USE:
        case LIBSSH2_ERROR_OUT_OF_BOUNDARY:
            return true;
        default:
            return false;
    }
}

Session::Impl::Impl(asio::any_io_executor ex)
    : executor(ex), socket(ex), timer(ex) {
    ++g_open_sessions;
}

Session::Impl::~Impl() {
    // Shut the socket down first: whatever libssh2 still tries to send while freeing
    // (channel close, SFTP close) then fails at once with EPIPE instead of returning
    // EAGAIN forever. Then free in dependency order.
    if (socket.is_open()) {
        boost::system::error_code ignored;
        socket.shutdown(tcp::socket::shutdown_both, ignored);
    }
    parked_files.clear();
    parked_channels.clear();
    sftp.reset();
    session.reset();
    // What libssh2 abandoned (see session_arena.hpp) goes now.
    arena.release_all();
    boost::system::error_code ignored;
    socket.close(ignored);
    --g_open_sessions;
}

std::string Session::Impl::last_error_text() const {
    if (!session) return {};
    char* msg = nullptr;
    int len = 0;
    libssh2_session_last_error(session.get(), &msg, &len, 0);
    return msg != nullptr ? std::string(msg, static_cast<std::size_t>(len)) : std::string();
}

int Session::Impl::last_errno() const {
    return session ? libssh2_session_last_errno(session.get()) : 0;
}

void Session::Impl::mark_broken(std::string reason) {
    if (!broken) {
        broken = true;
        broken_reason = std::move(reason);
    }
    if (socket.is_open()) {
        boost::system::error_code ignored;
        socket.shutdown(tcp::socket::shutdown_both, ignored);
    }
}

Error busy_error(const Session::Impl& impl) {
    return Error(errc::invalid_argument,
                 impl.peer + ": another operation is already running on this session (a "
                             "Session runs one operation at a time)");
}

Error Session::Impl::fail(errc kind, std::string_view what, long rc) {
    std::string msg = peer + ": " + std::string(what) + " failed: ";
    std::string detail = last_error_text();
    msg += detail.empty() ? make_libssh2_error(static_cast<int>(rc)).message() : detail;
    if (is_transport_failure(rc)) {
        msg += " (connection lost)";
        mark_broken(msg);
        kind = errc::connection_lost;
    }
    return Error(make_error_code(kind), std::move(msg));
}

Error Session::Impl::interrupted_error(boost::system::error_code ec, std::string_view what,
                                       std::chrono::milliseconds limit) {
    std::string msg = peer + ": " + std::string(what);
    if (ec == make_error_code(errc::timeout))
        msg += " exceeded its deadline of " + format_duration(limit);
    else
        msg += " was cancelled";
    mark_broken(msg);
    return Error(ec, std::move(msg));
}

Error Session::Impl::unusable_error() const {
    return Error(errc::session_unusable,
                 peer + ": session unusable after an earlier failure: " + broken_reason);
}

asio::awaitable<boost::system::error_code> Session::Impl::wait_socket(Clock::time_point deadline) {
    using asio::experimental::make_parallel_group;
    using asio::experimental::wait_for_one;
    const int dirs = libssh2_session_block_directions(session.get());
    const auto now = Clock::now();
    if (now >= deadline) co_return make_error_code(errc::timeout);
    // libssh2 sometimes reports no direction right after EAGAIN (libssh2 #1672): wait for
    // input, but give up the wait after a pause that grows (1, 2, 4 ... 50 ms) while the
    // condition lasts, so neither a spin nor a stall.
    const bool poll_only = dirs == 0;
    auto pause = std::chrono::milliseconds(0);
    if (poll_only) {
        pause = std::chrono::milliseconds(std::min(50, 1 << std::min(direction_less, 6)));
        ++direction_less;
    } else {
        direction_less = 0;
    }
    // Even when libssh2 names a direction, re-poll it at least once a second: should it hold a
    // complete packet while the socket stays quiet (a lost wake-up), the call still proceeds
    // within a second instead of waiting out the whole deadline.
    const auto until =
        std::min(deadline, now + (poll_only ? pause : std::chrono::milliseconds(1000)));
    timer.expires_at(until);

    const bool want_in = poll_only || (dirs & LIBSSH2_SESSION_BLOCK_INBOUND) != 0;
    const bool want_out = (dirs & LIBSSH2_SESSION_BLOCK_OUTBOUND) != 0;
    bool socket_ready = false;
    bool timer_fired = false;
    if (want_in && want_out) {
        auto [order, e_in, e_out, e_t] =
            co_await make_parallel_group(socket.async_wait(tcp::socket::wait_read, asio::deferred),
                                         socket.async_wait(tcp::socket::wait_write, asio::deferred),
                                         timer.async_wait(asio::deferred))
                .async_wait(wait_for_one(), asio::use_awaitable);
        socket_ready = (order[0] == 0 && !e_in) || (order[0] == 1 && !e_out);
        timer_fired = order[0] == 2 && !e_t;
    } else {
        auto [order, e_s, e_t] =
            co_await make_parallel_group(
                socket.async_wait(want_in ? tcp::socket::wait_read : tcp::socket::wait_write,
                                  asio::deferred),
                timer.async_wait(asio::deferred))
                .async_wait(wait_for_one(), asio::use_awaitable);
        socket_ready = order[0] == 0 && !e_s;
        timer_fired = order[0] == 1 && !e_t;
    }
    if (socket_ready) co_return boost::system::error_code{};
    if (timer_fired) {
        if (until < deadline) co_return boost::system::error_code{};  // re-poll libssh2
        co_return make_error_code(errc::timeout);
    }
    asio::cancellation_state cs = co_await asio::this_coro::cancellation_state;
    if (cs.cancelled() != asio::cancellation_type::none) co_return make_error_code(errc::cancelled);
    // The socket wait failed for another reason (closed under us): let libssh2 find out.
    co_return boost::system::error_code{};
}

// ---------------------------------------------------------------------------------------

namespace {

asio::awaitable<Result<void>> tcp_connect(Session::Impl& impl, Clock::time_point deadline,
                                          std::chrono::milliseconds limit) {
    using asio::experimental::make_parallel_group;
    using asio::experimental::wait_for_one;
    std::vector<tcp::endpoint> endpoints;
    boost::system::error_code ec;
    auto address = asio::ip::make_address(impl.host, ec);
    if (!ec) {
        endpoints.emplace_back(address, impl.port);
    } else {
        tcp::resolver resolver(impl.executor);
        impl.timer.expires_at(deadline);
        auto [order, e_r, results, e_t] =
            co_await make_parallel_group(
                resolver.async_resolve(impl.host, std::to_string(impl.port), asio::deferred),
                impl.timer.async_wait(asio::deferred))
                .async_wait(wait_for_one(), asio::use_awaitable);
        if (order[0] == 1)
            co_return Error(errc::timeout, impl.peer + ": resolving " + impl.host +
                                               " exceeded the connect deadline of " +
                                               format_duration(limit));
        if (e_r)
            co_return Error(errc::connect_failed,
                            impl.peer + ": cannot resolve " + impl.host + ": " + e_r.message());
        for (const auto& r : results) endpoints.push_back(r.endpoint());
    }
    std::string last_failure;
    for (const auto& ep : endpoints) {
        if (impl.socket.is_open()) impl.socket.close(ec);
        impl.timer.expires_at(deadline);
        auto [order, e_c, e_t] =
            co_await make_parallel_group(impl.socket.async_connect(ep, asio::deferred),
                                         impl.timer.async_wait(asio::deferred))
                .async_wait(wait_for_one(), asio::use_awaitable);
        if (order[0] == 0 && !e_c) {
            impl.socket.set_option(tcp::no_delay(true), ec);
            impl.socket.non_blocking(true, ec);
            co_return Result<void>{};
        }
        if (order[0] == 1) {
            asio::cancellation_state cs = co_await asio::this_coro::cancellation_state;
            if (cs.cancelled() != asio::cancellation_type::none)
                co_return Error(errc::cancelled, impl.peer + ": connect cancelled");
            co_return Error(errc::timeout, impl.peer + ": TCP connect exceeded its deadline of " +
                                               format_duration(limit));
        }
        last_failure = e_c.message();
        if (e_c == asio::error::operation_aborted)
            co_return Error(errc::cancelled, impl.peer + ": connect cancelled");
    }
    co_return Error(errc::connect_failed, impl.peer + ": TCP connect failed: " + last_failure);
}

asio::awaitable<Result<void>> verify_host_key(Session::Impl& impl, const ConnectOptions& opts) {
    std::size_t len = 0;
    int type = 0;
    const char* blob = libssh2_session_hostkey(impl.session.get(), &len, &type);
    if (blob == nullptr || len == 0)
        co_return Error(errc::handshake_failed, impl.peer + ": server sent no host key");
    impl.host_key.blob.assign(blob, len);
    impl.host_key.type = key_type_of_blob(impl.host_key.blob);
    const std::string name = known_hosts_name(impl.host, impl.port);
    const std::string fingerprint = sha256_fingerprint(impl.host_key.blob);
    auto& kh = *opts.known_hosts;
    auto verified = kh.verify(impl.host, impl.port, impl.host_key, opts.host_key_policy);
    if (!verified) co_return verified.error();
    const auto& check = *verified;
    const std::string file = kh.path().empty() ? std::string("known_hosts") : kh.path();
    switch (check.verdict) {
        case HostKeyVerdict::known:
            co_return Result<void>{};
        case HostKeyVerdict::recorded:
            if (impl.logger)
                impl.logger->info("{}: recorded new host key {} ({}) in {}", impl.peer,
                                  fingerprint, impl.host_key.type, file);
            co_return Result<void>{};
        case HostKeyVerdict::revoked:
            co_return Error(errc::host_key_revoked,
                            impl.peer + ": host key for " + name + " is REVOKED in " + file +
                                " line " + std::to_string(check.known_line) + ": server presented " +
                                fingerprint + " (" + impl.host_key.type + "); refusing");
        case HostKeyVerdict::changed:
            co_return Error(errc::host_key_changed,
                            impl.peer + ": host key for " + name + " CHANGED: " + file + " line " +
                                std::to_string(check.known_line) + " has " +
                                check.known_fingerprint + " (" + check.known_type +
                                "), server presented " + fingerprint + " (" +
                                impl.host_key.type +
                                "); refusing (possible man-in-the-middle; if the key really "
                                "changed, remove the old entry)");
        case HostKeyVerdict::unknown:
            break;
    }
    co_return Error(errc::host_key_unknown,
                    impl.peer + ": host key for " + name + " is not in " + file +
                        ": server presented " + fingerprint + " (" + impl.host_key.type +
                        "); refusing under host-key policy 'strict' (use 'accept-new' to "
                        "trust it on first use)");
}

asio::awaitable<Result<void>> authenticate(Session::Impl& impl, const Credentials& cred,
                                           Clock::time_point deadline,
                                           std::chrono::milliseconds limit) {
    LIBSSH2_SESSION* s = impl.session.get();
    boost::system::error_code interrupted;
    const char* list = nullptr;
    const auto user_len = static_cast<unsigned>(cred.user.size());
    long listed = co_await impl.drive(
        [&]() -> long {
            list = libssh2_userauth_list(s, cred.user.c_str(), user_len);
            if (list != nullptr) return 0;
            return libssh2_userauth_authenticated(s) ? 0 : impl.last_errno();
        },
        deadline, interrupted);
    if (interrupted) co_return impl.interrupted_error(interrupted, "authentication", limit);
    if (libssh2_userauth_authenticated(s)) co_return Result<void>{};  // "none" accepted
    // No list and not authenticated: the server went away (MaxStartups, penalties...), which
    // is worth a retry, unlike refused credentials.
    if (list == nullptr && listed != 0)
        co_return impl.fail(errc::handshake_failed, "listing authentication methods", listed);
    const std::string offered_text = list != nullptr ? list : "";
    const auto methods = split_methods(list);

    std::vector<std::string> tried;
    std::string last_detail;
    auto attempt = [&](long rc, std::string label) -> bool {
        tried.push_back(std::move(label));
        if (rc == 0) return true;
        last_detail = impl.last_error_text();
        if (is_transport_failure(rc)) impl.mark_broken(impl.peer + ": connection lost during auth");
        return false;
    };

    if (cred.key && offered(methods, "publickey")) {
        const auto& key = *cred.key;
        const char* pass = key.passphrase.empty() ? nullptr : key.passphrase.reveal().c_str();
        void* signer = const_cast<detail::KeySigner*>(key.signer.get());
        long rc = co_await impl.drive(
            [&] {
                if (signer != nullptr) {
                    const auto& blob = key.signer->public_blob();
                    return libssh2_userauth_publickey(
                        s, cred.user.c_str(), reinterpret_cast<const unsigned char*>(blob.data()),
                        blob.size(), sign_with_parsed_key, &signer);
                }
                return libssh2_userauth_publickey_frommemory(
                    s, cred.user.c_str(), cred.user.size(), nullptr, 0,
                    key.contents.reveal().data(), key.contents.reveal().size(), pass);
            },
            deadline, interrupted);
        if (interrupted) co_return impl.interrupted_error(interrupted, "authentication", limit);
        if (attempt(rc, "publickey (key " + key.path + ")")) co_return Result<void>{};
    }
    if (cred.use_agent && offered(methods, "publickey") && !impl.broken) {
        // The agent lives on a local Unix socket; libssh2 talks to it synchronously, which
        // costs well under a millisecond per signature.
        std::unique_ptr<LIBSSH2_AGENT, void (*)(LIBSSH2_AGENT*)> agent(libssh2_agent_init(s),
                                                                      libssh2_agent_free);
        bool ok = false;
        if (agent && libssh2_agent_connect(agent.get()) == 0 &&
            libssh2_agent_list_identities(agent.get()) == 0) {
            libssh2_agent_publickey* identity = nullptr;
            libssh2_agent_publickey* prev = nullptr;
            while (!ok && libssh2_agent_get_identity(agent.get(), &identity, prev) == 0) {
                long rc = co_await impl.drive(
                    [&] { return libssh2_agent_userauth(agent.get(), cred.user.c_str(), identity); },
                    deadline, interrupted);
                if (interrupted)
                    co_return impl.interrupted_error(interrupted, "authentication", limit);
                ok = rc == 0;
                if (!ok && is_transport_failure(rc)) break;
                prev = identity;
            }
            libssh2_agent_disconnect(agent.get());
            tried.push_back("publickey (ssh-agent)");
        } else {
            tried.push_back("publickey (ssh-agent unreachable: is SSH_AUTH_SOCK set?)");
        }
        if (ok) co_return Result<void>{};
    }
    if (cred.password && offered(methods, "password") && !impl.broken) {
        const std::string& pw = cred.password->reveal();
        long rc = co_await impl.drive(
            [&] {
                return libssh2_userauth_password_ex(s, cred.user.c_str(), user_len, pw.c_str(),
                                                    static_cast<unsigned>(pw.size()), nullptr);
            },
            deadline, interrupted);
        if (interrupted) co_return impl.interrupted_error(interrupted, "authentication", limit);
        if (attempt(rc, "password")) co_return Result<void>{};
    }
    if (cred.password && offered(methods, "keyboard-interactive") && !impl.broken) {
        impl.kbdint_password = &*cred.password;
        long rc = co_await impl.drive(
            [&] {
                return libssh2_userauth_keyboard_interactive_ex(s, cred.user.c_str(), user_len,
                                                                kbdint_answer);
            },
            deadline, interrupted);
        impl.kbdint_password = nullptr;
        if (interrupted) co_return impl.interrupted_error(interrupted, "authentication", limit);
        if (attempt(rc, "keyboard-interactive")) co_return Result<void>{};
    }

    if (impl.broken)
        co_return Error(errc::connection_lost,
                        impl.peer + ": connection lost during authentication: " + impl.broken_reason);
    std::string msg = impl.peer + ": authentication as '" + cred.user + "' refused; tried: ";
    if (tried.empty()) {
        msg += "nothing (no configured method is offered by the server)";
    } else {
        for (std::size_t i = 0; i < tried.size(); ++i) msg += (i ? ", " : "") + tried[i];
    }
    msg += "; server offers: " + (offered_text.empty() ? std::string("(none)") : offered_text);
    if (!last_detail.empty()) msg += "; last error: " + last_detail;
    if (impl.logger) impl.logger->debug("{}", msg);
    if (cred.key && cred.key->type == "ssh-rsa")
        msg += "; note: libssh2 1.10 signs RSA keys only with ssh-rsa (SHA-1), which OpenSSH 8.8 "
               "and later refuse by default: use an ed25519 or ECDSA key";
    co_return Error(errc::auth_failed, std::move(msg));
}

}  // namespace

asio::awaitable<Result<std::unique_ptr<Session>>> Session::connect(asio::any_io_executor executor,
                                                                 ConnectOptions opts) {
    init_libssh2_once();
    auto impl = std::make_unique<Impl>(executor);
    impl->host = opts.host;
    impl->port = opts.port;
    impl->user = opts.credentials.user;
    impl->peer = opts.credentials.user + "@" + opts.host + ":" + std::to_string(opts.port);
    impl->logger = opts.logger;
    if (opts.host.empty() || opts.credentials.user.empty() || !opts.known_hosts)
        co_return Error(errc::invalid_argument,
                        impl->peer + ": host, user and known_hosts are required to connect");
    const auto limit = opts.timeout;
    const auto deadline = Clock::now() + limit;

    try {
        if (auto r = co_await tcp_connect(*impl, deadline, limit); !r) co_return r.error();

        impl->session.reset(
            libssh2_session_init_ex(arena_alloc, arena_free, arena_realloc, impl.get()));
        if (!impl->session)
            co_return Error(errc::handshake_failed, impl->peer + ": libssh2_session_init failed");
        LIBSSH2_SESSION* s = impl->session.get();
        libssh2_session_set_blocking(s, 0);
        libssh2_session_callback_set(s, LIBSSH2_CALLBACK_RECV,
                                     reinterpret_cast<void*>(&recv_with_quickack));
        libssh2_session_callback_set(s, LIBSSH2_CALLBACK_SEND,
                                     reinterpret_cast<void*>(&send_nosignal));
        const auto pref =
            hostkey_preference(s, opts.known_hosts->key_types_for(opts.host, opts.port));
        if (!pref.empty() &&
            libssh2_session_method_pref(s, LIBSSH2_METHOD_HOSTKEY, pref.c_str()) != 0 &&
            impl->logger)
            impl->logger->debug("{}: host-key preference '{}' refused by libssh2", impl->peer,
                                pref);
        prefer_cheap_methods(*impl, s);

        boost::system::error_code interrupted;
        const auto fd = impl->socket.native_handle();
        long rc = co_await impl->drive([&] { return libssh2_session_handshake(s, fd); }, deadline,
                                       interrupted);
        if (interrupted) co_return impl->interrupted_error(interrupted, "SSH handshake", limit);
        if (rc != 0) {
            auto e = impl->fail(errc::handshake_failed, "SSH handshake", rc);
            co_return e;
        }
        if (auto r = co_await verify_host_key(*impl, opts); !r) co_return r.error();
        if (auto r = co_await authenticate(*impl, opts.credentials, deadline, limit); !r)
            co_return r.error();
    } catch (const boost::system::system_error& e) {
        // Thrown by co_await when the coroutine was cancelled (Asio's throw_if_cancelled).
        co_return Error(errc::cancelled, impl->peer + ": connect cancelled (" + e.what() + ")");
    }
    if (impl->logger)
        impl->logger->debug("{}: connected, host key {} ({})", impl->peer,
                            sha256_fingerprint(impl->host_key.blob), impl->host_key.type);
    co_return std::unique_ptr<Session>(new Session(std::move(impl)));
}

Session::Session(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Session::~Session() = default;

bool Session::usable() const noexcept { return !impl_->broken; }
const std::string& Session::peer() const noexcept { return impl_->peer; }
const HostKey& Session::host_key() const noexcept { return impl_->host_key; }

NegotiatedMethods Session::negotiated() const {
    NegotiatedMethods m;
    LIBSSH2_SESSION* s = impl_->session.get();
    if (s == nullptr) return m;
    auto name = [s](int type) {
        const char* n = libssh2_session_methods(s, type);
        return n != nullptr ? std::string(n) : std::string();
    };
    m.kex = name(LIBSSH2_METHOD_KEX);
    m.host_key = name(LIBSSH2_METHOD_HOSTKEY);
    m.cipher_out = name(LIBSSH2_METHOD_CRYPT_CS);
    m.cipher_in = name(LIBSSH2_METHOD_CRYPT_SC);
    m.mac_out = name(LIBSSH2_METHOD_MAC_CS);
    m.mac_in = name(LIBSSH2_METHOD_MAC_SC);
    return m;
}

asio::awaitable<void> Session::disconnect() { co_await disconnect(std::chrono::seconds(2)); }

asio::awaitable<void> Session::disconnect(std::chrono::milliseconds grace) {
    auto& impl = *impl_;
    // Mid-operation (from another coroutine) a polite goodbye would interleave packets:
    // just drop the connection, which fails the running operation.
    if (impl.busy) {
        impl.mark_broken(impl.peer + ": disconnected while an operation was running");
        co_return;
    }
    if (!impl.broken && impl.session) {
        try {
            boost::system::error_code interrupted;
            const auto deadline = Clock::now() + grace;
            if (impl.sftp) {
                long rc = co_await impl.drive(
                    [&] { return libssh2_sftp_shutdown(impl.sftp.get()); }, deadline, interrupted);
                // Anything but EAGAIN means libssh2 has freed it; otherwise the destructor will.
                if (rc != LIBSSH2_ERROR_EAGAIN) (void)impl.sftp.release();
            }
            if (!interrupted)
                co_await impl.drive(
                    [&] {
                        return libssh2_session_disconnect_ex(
                            impl.session.get(), SSH_DISCONNECT_BY_APPLICATION, "guardia done", "");
                    },
                    deadline, interrupted);
        } catch (const boost::system::system_error&) {
            // cancelled: fall through to the unusable state; the destructor frees.
        }
    }
    impl.mark_broken(impl.peer + ": disconnected");
}

std::size_t open_session_count() noexcept { return g_open_sessions.load(); }

const char* library_version() noexcept {
    const char* v = libssh2_version(0);
    return v ? v : "unknown";
}

std::string ExecResult::err_tail(std::size_t max) const {
    if (err.size() <= max) return err;
    return "..." + err.substr(err.size() - max);
}

}  // namespace guardia::ssh
