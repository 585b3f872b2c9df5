// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Host program run by build.rs: prints the C layout of isthmus.h as a Rust table. */
#include <stddef.h>
#include <stdio.h>

#include "isthmus.h"

#define SIZE(t) printf("    (\"%s\", %zu),\n", #t, sizeof(struct t))
#define FIELD(t, f) printf("    (\"%s.%s\", %zu),\n", #t, #f, offsetof(struct t, f))

int main(void)
{
	printf("/// `(\"struct\", size)` and `(\"struct.field\", offset)` as clang lays out isthmus.h.\n");
	printf("pub const C_LAYOUT: &[(&str, usize)] = &[\n");
	SIZE(ist_addr);
	SIZE(ist_svc_key);
	FIELD(ist_svc_key, vip);
	FIELD(ist_svc_key, port);
	FIELD(ist_svc_key, proto);
	SIZE(ist_svc_value);
	FIELD(ist_svc_value, service_id);
	FIELD(ist_svc_value, selection);
	FIELD(ist_svc_value, count);
	SIZE(ist_vip_key);
	SIZE(ist_vip_value);
	SIZE(ist_slot_key);
	FIELD(ist_slot_key, selection);
	FIELD(ist_slot_key, index);
	SIZE(ist_slot_value);
	SIZE(ist_backend_key);
	SIZE(ist_backend_value);
	FIELD(ist_backend_value, addr);
	FIELD(ist_backend_value, port);
	FIELD(ist_backend_value, service_id);
	SIZE(ist_flow_key);
	FIELD(ist_flow_key, src);
	FIELD(ist_flow_key, dst);
	FIELD(ist_flow_key, sport);
	FIELD(ist_flow_key, dport);
	FIELD(ist_flow_key, proto);
	SIZE(ist_flow_value);
	FIELD(ist_flow_value, backend_id);
	FIELD(ist_flow_value, service_id);
	SIZE(ist_rnat_value);
	FIELD(ist_rnat_value, vip);
	FIELD(ist_rnat_value, port);
	FIELD(ist_rnat_value, service_id);
	SIZE(ist_sock_key);
	FIELD(ist_sock_key, cookie);
	FIELD(ist_sock_key, addr);
	FIELD(ist_sock_key, port);
	SIZE(ist_stat_key);
	FIELD(ist_stat_key, service_id);
	FIELD(ist_stat_key, reason);
	SIZE(ist_stat_value);
	FIELD(ist_stat_value, packets);
	FIELD(ist_stat_value, bytes);
	SIZE(ist_config);
	FIELD(ist_config, netns_cookie);
	SIZE(ist_rr_value);
	printf("];\n");
	printf("/// `enum ist_reason` as the programs count it.\n");
	printf("pub const C_REASONS: &[(&str, u32)] = &[\n");
#define REASON(r) printf("    (\"%s\", %d),\n", #r, r)
	REASON(IST_FORWARD);
	REASON(IST_REVERSE);
	REASON(IST_NEW_FLOW);
	REASON(IST_RESELECT);
	REASON(IST_DROP_NO_PORT);
	REASON(IST_DROP_NO_BACKEND);
	REASON(IST_DROP_ERROR);
	REASON(IST_SOCK_CONNECT);
	REASON(IST_FRAGMENT);
	REASON(IST_REASONS);
	printf("];\n");
	return 0;
}
