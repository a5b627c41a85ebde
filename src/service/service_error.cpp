#include "guardia/service/service_error.hpp"

#include <stdexcept>

namespace guardia::service {

std::string_view to_string(ServiceErrc code) noexcept {
    switch (code) {
        case ServiceErrc::bad_request:
            return "bad_request";
        case ServiceErrc::forbidden:
            return "forbidden";
        case ServiceErrc::self_approval:
            return "self_approval";
        case ServiceErrc::four_eyes:
            return "four_eyes";
        case ServiceErrc::not_found:
            return "not_found";
        case ServiceErrc::conflict:
            return "conflict";
        case ServiceErrc::node_claimed:
            return "node_claimed";
        case ServiceErrc::approval_mismatch:
            return "approval_mismatch";
        case ServiceErrc::checksum_mismatch:
            return "checksum_mismatch";
        case ServiceErrc::idempotency_key_reused:
            return "idempotency_key_reused";
        case ServiceErrc::path_form_disabled:
            return "path_form_disabled";
        case ServiceErrc::path_refused:
            return "path_refused";
        case ServiceErrc::payload_too_large:
            return "payload_too_large";
        case ServiceErrc::local_io_failed:
            return "local_io_failed";
        case ServiceErrc::store_unavailable:
            return "store_unavailable";
        case ServiceErrc::stopping:
            return "stopping";
        case ServiceErrc::no_rollout_in_flight:
            return "no_rollout_in_flight";
        case ServiceErrc::control_refused:
            return "control_refused";
        case ServiceErrc::approval_needs_validate:
            return "approval_needs_validate";
    }
    return "internal_error";
}

void throw_exception_from_error(const ServiceError& e, const boost::source_location&) {
    throw std::runtime_error(std::string(to_string(e.code)) + ": " + e.message);
}

}  // namespace guardia::service
