#include "guardia/service/approvals.hpp"

#include "guardia/core/json_input.hpp"

#include <algorithm>

namespace guardia::service {

namespace json = boost::json;

std::string normalize_identity(std::string_view id) {
    auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; };
    while (!id.empty() && space(id.front())) id.remove_prefix(1);
    while (!id.empty() && space(id.back())) id.remove_suffix(1);
    std::string out(id);
    for (auto& c : out)
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    return out;
}

bool same_identity(std::string_view a, std::string_view b) {
    const auto na = normalize_identity(a), nb = normalize_identity(b);
    return !na.empty() && na == nb;
}

// Control characters make two identities look alike ("alice\0" shows as "alice"): refused
// inside the name (surrounding whitespace is dropped by the normalisation anyway).
ServiceResult<void> check_identity(std::string_view field, std::string_view id) {
    const std::string f(field);
    const auto trimmed = normalize_identity(id);
    if (trimmed.empty()) return ServiceError(ServiceErrc::bad_request, f + ": must not be blank");
    if (id.size() > 256) return ServiceError(ServiceErrc::bad_request, f + ": longer than 256");
    for (char c : trimmed) {
        const auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7f)
            return ServiceError(ServiceErrc::bad_request,
                                f + ": must not hold control characters");
    }
    return {};
}

ServiceResult<void> check_approver(std::string_view requester, std::string_view approver,
                                   bool forbid_self_approval) {
    if (auto ok = check_identity("approver_id", approver); !ok) return ok;
    if (forbid_self_approval && same_identity(requester, approver))
        return ServiceError(ServiceErrc::self_approval,
                            "approver " + printable(approver) +
                                " requested this change; another approver must trigger it");
    return {};
}

ServiceResult<void> check_verdict_author(std::string_view pm, std::string_view requester,
                                         const std::vector<std::string>& approvers,
                                         bool four_eyes) {
    if (auto ok = check_identity("pm_id", pm); !ok) return ok;
    if (!four_eyes) return {};
    if (same_identity(pm, requester))
        return ServiceError(ServiceErrc::four_eyes,
                            "PM " + printable(pm) +
                                " requested this change; the verdict must come from someone "
                                "other than the requester and the approver");
    for (const auto& approver : approvers)
        if (same_identity(pm, approver))
            return ServiceError(ServiceErrc::four_eyes,
                                "PM " + printable(pm) +
                                    " approved this deployment; the verdict must come from "
                                    "someone other than the requester and the approver");
    return {};
}

ServiceResult<void> check_expected_set(const ArtifactSet& expected, const ArtifactSet& staged) {
    std::string diff;
    auto add = [&](const std::string& s) { diff += (diff.empty() ? "" : "; ") + s; };
    for (const auto& [name, sha] : expected) {
        auto it = staged.find(name);
        if (it == staged.end())
            add(name + " is not staged");
        else if (it->second != sha)
            add(name + " is staged with sha256 " + it->second + ", not " + sha);
    }
    for (const auto& [name, sha] : staged)
        if (!expected.count(name)) add(name + " is staged but not in the approved set");
    if (diff.empty()) return {};
    return ServiceError(ServiceErrc::approval_mismatch,
                        "the staged artifacts are not the approved set: " + diff);
}

json::object to_json(const ArtifactSet& set) {
    json::object o;
    for (const auto& [name, sha] : set) o[name] = sha;
    return o;
}

ServiceResult<ArtifactSet> artifact_set_from_json(const json::value& v, std::string_view field) {
    const std::string f(field);
    if (!v.is_object())
        return ServiceError(ServiceErrc::bad_request,
                            f + ": must be an object of artifact name -> sha256");
    ArtifactSet out;
    for (const auto& kv : v.get_object()) {
        const auto* s = kv.value().if_string();
        const bool hex = s && s->size() == 64 && std::all_of(s->begin(), s->end(), [](char c) {
                             return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
                         });
        if (!hex)
            return ServiceError(ServiceErrc::bad_request,
                                f + "." + printable(kv.key()) +
                                    ": must be a sha256 (64 lower-case hex digits)");
        out[std::string(kv.key())] = std::string(*s);
    }
    if (out.empty())
        return ServiceError(ServiceErrc::bad_request, f + ": must name at least one artifact");
    return out;
}

}  // namespace guardia::service
