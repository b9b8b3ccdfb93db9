/* xpunet: Kubernetes pod networking, NetworkPolicy and Service load balancing (IPv4 and IPv6)
 * for the Portable NIC Architecture (PNA).
 *
 * This program implements the contract in xpunet.p4info.txtpb: the same tables, keys, actions,
 * parameters, sizes and counters (checked by tests/unit/pipeline/test_p4_program.py, which parses
 * both).  No P4 compiler is installed where xpunet is developed, so the program is NOT compiled
 * there; the reference interpreter (xpunet.pipeline.interpreter) executes the same walk and is
 * what softipu runs.  docs/pipeline.md describes every table.
 *
 * Walk of a packet (main_control `ingress`):
 *   port_info -> endpoint_by_ip (anti-spoofing, pod ports only) -> conntrack
 *   new flows:   service_frontend | node_address+node_port -> backend_group -> affinity -> maglev_backend
 *                -> DNAT -> ip_set_dst + acl_egress (pod sources) -> fib -> next_hop
 *                -> ip_set_src + acl_ingress (local pod destinations) -> learn conntrack (+affinity)
 *   known flows: conntrack rewrite (DNAT or reverse NAT) -> fib -> next_hop
 * Every default action fails closed or is a no-op that leads to a later fail-closed table.
 */

#include <core.p4>
#include <pna.p4>

typedef bit<32>  ipv4_addr_t;
typedef bit<128> ipv6_addr_t;
typedef bit<128> set_bits_t;   // IP-set membership bitmap (schema SET_BITS)

const bit<16> ETHERTYPE_IPV4 = 0x0800;
const bit<16> ETHERTYPE_IPV6 = 0x86dd;
const bit<8>  PROTO_TCP  = 6;
const bit<8>  PROTO_UDP  = 17;
const bit<8>  PROTO_SCTP = 132;

const bit<8> FLAG_AFFINITY = 0x1;
const bit<8> FLAG_LOCAL_PODS_USE_INTERNAL = 0x2;

header ethernet_t { bit<48> dst_mac; bit<48> src_mac; bit<16> ether_type; }
header ipv4_t {
    bit<4> version; bit<4> ihl; bit<8> dscp_ecn; bit<16> total_len; bit<16> identification;
    bit<3> flags; bit<13> frag_offset; bit<8> ttl; bit<8> protocol; bit<16> checksum;
    ipv4_addr_t src_addr; ipv4_addr_t dst_addr;
}
header ipv6_t {
    bit<4> version; bit<8> traffic_class; bit<20> flow_label; bit<16> payload_len;
    bit<8> next_header; bit<8> hop_limit; ipv6_addr_t src_addr; ipv6_addr_t dst_addr;
}
// The first four bytes of TCP, UDP and SCTP are the ports; TCP flags follow in tcp_rest_t.
header l4_ports_t { bit<16> src_port; bit<16> dst_port; }
header tcp_rest_t { bit<32> seq; bit<32> ack; bit<4> data_offset; bit<4> res; bit<8> flags; bit<16> window; bit<16> checksum; bit<16> urgent; }

struct headers_t {
    ethernet_t ethernet;
    ipv4_t     ipv4;
    ipv6_t     ipv6;
    l4_ports_t ports;
    tcp_rest_t tcp;
}

struct metadata_t {
    bool        is_v6;
    ipv4_addr_t src_v4;  ipv4_addr_t dst_v4;     // rewritten by NAT before the FIB
    ipv6_addr_t src_v6;  ipv6_addr_t dst_v6;
    bit<8>      protocol;
    bit<16>     src_port; bit<16> dst_port;
    bit<32>     in_port;
    bit<32>     src_endpoint;  bool from_endpoint; bool from_host; bool port_ok;
    bit<32>     dst_endpoint;  bool deliver_local;
    bit<32>     out_port;
    bool        known_flow;    bool spoofed;
    bool        is_node_address;
    bool        is_service;    bit<32> service_port_id; bit<32> backend_group; bit<8> service_flags;
    bit<32>     affinity_timeout; bit<32> bucket_count; bool have_backend;
    bit<32>     bucket;
    set_bits_t  src_sets;      set_bits_t dst_sets;
    bool        allowed;
    bit<32>     next_hop_id;
    bit<32>     ct_timeout;
    bit<8>      ct_state;
    bit<32>     drop_reason;
}

parser main_parser(packet_in pkt, out headers_t hdr, inout metadata_t meta,
                   in pna_main_parser_input_metadata_t istd) {
    state start {
        pkt.extract(hdr.ethernet);
        transition select(hdr.ethernet.ether_type) {
            ETHERTYPE_IPV4: parse_ipv4;
            ETHERTYPE_IPV6: parse_ipv6;
            default: accept;
        }
    }
    state parse_ipv4 {
        pkt.extract(hdr.ipv4);
        meta.protocol = hdr.ipv4.protocol;
        transition select(hdr.ipv4.protocol) {
            PROTO_TCP: parse_tcp; PROTO_UDP: parse_ports; PROTO_SCTP: parse_ports; default: accept;
        }
    }
    state parse_ipv6 {
        pkt.extract(hdr.ipv6);
        meta.protocol = hdr.ipv6.next_header;
        transition select(hdr.ipv6.next_header) {
            PROTO_TCP: parse_tcp; PROTO_UDP: parse_ports; PROTO_SCTP: parse_ports; default: accept;
        }
    }
    state parse_tcp { pkt.extract(hdr.ports); pkt.extract(hdr.tcp); transition accept; }
    state parse_ports { pkt.extract(hdr.ports); transition accept; }
}

control pre_control(in headers_t hdr, inout metadata_t meta,
                    in pna_pre_input_metadata_t istd, inout pna_pre_output_metadata_t ostd) {
    apply { }  // no IPsec or decryption before the main control
}

control ingress(inout headers_t hdr, inout metadata_t meta,
                in pna_main_input_metadata_t istd, inout pna_main_output_metadata_t ostd) {

    Counter<bit<64>, bit<32>>(16, PNA_CounterType_t.PACKETS_AND_BYTES) drop_reasons;
    // The Maglev flow hash: the contract is CRC-32 (IEEE) over src, dst, protocol, sport, dport
    // (xpunet.pipeline.interpreter.flow_hash); a target must configure its hash unit to match.
    Hash<bit<32>>(PNA_HashAlgorithm_t.TARGET_DEFAULT) flow_hash;

    DirectCounter<bit<64>>(PNA_CounterType_t.PACKETS_AND_BYTES) port_info_counter;
    DirectCounter<bit<64>>(PNA_CounterType_t.PACKETS_AND_BYTES) endpoint_by_ip_v4_counter;
    DirectCounter<bit<64>>(PNA_CounterType_t.PACKETS_AND_BYTES) endpoint_by_ip_v6_counter;
    DirectCounter<bit<64>>(PNA_CounterType_t.PACKETS_AND_BYTES) ct_timeout_counter;
    DirectCounter<bit<64>>(PNA_CounterType_t.PACKETS_AND_BYTES) node_address_v4_counter;
    DirectCounter<bit<64>>(PNA_CounterType_t.PACKETS_AND_BYTES) node_address_v6_counter;
    DirectCounter<bit<64>>(PNA_CounterType_t.PACKETS_AND_BYTES) service_frontend_v4_counter;
    DirectCounter<bit<64>>(PNA_CounterType_t.PACKETS_AND_BYTES) service_frontend_v6_counter;
    DirectCounter<bit<64>>(PNA_CounterType_t.PACKETS_AND_BYTES) node_port_v4_counter;
    DirectCounter<bit<64>>(PNA_CounterType_t.PACKETS_AND_BYTES) node_port_v6_counter;
    DirectCounter<bit<64>>(PNA_CounterType_t.PACKETS_AND_BYTES) backend_group_counter;
    DirectCounter<bit<64>>(PNA_CounterType_t.PACKETS_AND_BYTES) maglev_backend_v4_counter;
    DirectCounter<bit<64>>(PNA_CounterType_t.PACKETS_AND_BYTES) maglev_backend_v6_counter;
    DirectCounter<bit<64>>(PNA_CounterType_t.PACKETS_AND_BYTES) ip_set_src_v4_counter;
    DirectCounter<bit<64>>(PNA_CounterType_t.PACKETS_AND_BYTES) ip_set_src_v6_counter;
    DirectCounter<bit<64>>(PNA_CounterType_t.PACKETS_AND_BYTES) ip_set_dst_v4_counter;
    DirectCounter<bit<64>>(PNA_CounterType_t.PACKETS_AND_BYTES) ip_set_dst_v6_counter;
    DirectCounter<bit<64>>(PNA_CounterType_t.PACKETS_AND_BYTES) acl_egress_counter;
    DirectCounter<bit<64>>(PNA_CounterType_t.PACKETS_AND_BYTES) acl_ingress_counter;
    DirectCounter<bit<64>>(PNA_CounterType_t.PACKETS_AND_BYTES) fib_v4_counter;
    DirectCounter<bit<64>>(PNA_CounterType_t.PACKETS_AND_BYTES) fib_v6_counter;
    DirectCounter<bit<64>>(PNA_CounterType_t.PACKETS_AND_BYTES) next_hop_counter;

    // ---- ports and anti-spoofing ---------------------------------------------------------
    action from_endpoint(bit<32> endpoint_id) { meta.from_endpoint = true; meta.src_endpoint = endpoint_id; meta.port_ok = true; }
    action from_host() { meta.from_host = true; meta.port_ok = true; }
    action from_uplink() { meta.port_ok = true; }
    action drop_unknown_port() { meta.port_ok = false; meta.drop_reason = 1; }
    action source_endpoint(bit<32> endpoint_id) { meta.spoofed = endpoint_id != meta.src_endpoint; }
    action drop_spoofed_source() { meta.spoofed = true; }

    table port_info {
        key = { meta.in_port : exact @name("in_port"); }
        actions = { from_endpoint; from_host; from_uplink; @defaultonly drop_unknown_port; }
        const default_action = drop_unknown_port;
        pna_direct_counter = port_info_counter;
        size = 4096;
    }
    table endpoint_by_ip_v4 {
        key = { meta.src_v4 : exact @name("src_addr"); }
        actions = { source_endpoint; @defaultonly drop_spoofed_source; }
        const default_action = drop_spoofed_source;
        pna_direct_counter = endpoint_by_ip_v4_counter;
        size = 16384;
    }
    table endpoint_by_ip_v6 {
        key = { meta.src_v6 : exact @name("src_addr"); }
        actions = { source_endpoint; @defaultonly drop_spoofed_source; }
        const default_action = drop_spoofed_source;
        pna_direct_counter = endpoint_by_ip_v6_counter;
        size = 16384;
    }

    // ---- connection tracking (learned by the target) ------------------------------------------
    // Each allowed new flow is learned in both directions: the original tuple (with the DNAT
    // target for a service flow) and the reply tuple (with the frontend to reverse-NAT to).
    // PNA add_entry inserts only the key being looked up, so on hardware the reply entry needs
    // a second pass (recirculation) with the reply tuple in the key metadata; softipu and the
    // kernel target (Linux conntrack) learn both at once.
    action ct_established() { meta.known_flow = true; }
    action ct_dnat_v4(bit<32> addr, bit<16> port) { meta.known_flow = true; meta.dst_v4 = addr; meta.dst_port = port; }
    action ct_dnat_v6(bit<128> addr, bit<16> port) { meta.known_flow = true; meta.dst_v6 = addr; meta.dst_port = port; }
    action ct_reverse_nat_v4(bit<32> addr, bit<16> port) { meta.known_flow = true; meta.src_v4 = addr; meta.src_port = port; }
    action ct_reverse_nat_v6(bit<128> addr, bit<16> port) { meta.known_flow = true; meta.src_v6 = addr; meta.src_port = port; }
    action ct_new_flow() { meta.known_flow = false; }

    table conntrack_v4 {
        key = {
            meta.src_v4 : exact @name("src_addr");
            meta.dst_v4 : exact @name("dst_addr");
            meta.protocol : exact @name("protocol");
            meta.src_port : exact @name("src_port");
            meta.dst_port : exact @name("dst_port");
        }
        actions = { ct_established; ct_dnat_v4; ct_reverse_nat_v4; @defaultonly ct_new_flow; }
        const default_action = ct_new_flow;
        add_on_miss = true;
        pna_idle_timeout = PNA_IdleTimeout_t.AUTO_DELETE;
        size = 262144;
    }
    table conntrack_v6 {
        key = {
            meta.src_v6 : exact @name("src_addr");
            meta.dst_v6 : exact @name("dst_addr");
            meta.protocol : exact @name("protocol");
            meta.src_port : exact @name("src_port");
            meta.dst_port : exact @name("dst_port");
        }
        actions = { ct_established; ct_dnat_v6; ct_reverse_nat_v6; @defaultonly ct_new_flow; }
        const default_action = ct_new_flow;
        add_on_miss = true;
        pna_idle_timeout = PNA_IdleTimeout_t.AUTO_DELETE;
        size = 262144;
    }

    action set_ct_timeout(bit<32> seconds) { meta.ct_timeout = seconds; }
    action use_builtin_ct_timeout() { meta.ct_timeout = 120; }
    table ct_timeout {
        key = { meta.protocol : exact @name("protocol"); meta.ct_state : exact @name("ct_state"); }
        actions = { set_ct_timeout; @defaultonly use_builtin_ct_timeout; }
        const default_action = use_builtin_ct_timeout;
        pna_direct_counter = ct_timeout_counter;
        size = 64;
    }

    // ---- services ---------------------------------------------------------------------------
    action to_node_address() { meta.is_node_address = true; }
    action not_node_address() { meta.is_node_address = false; }
    table node_address_v4 {
        key = { meta.dst_v4 : exact @name("dst_addr"); }
        actions = { to_node_address; @defaultonly not_node_address; }
        const default_action = not_node_address;
        pna_direct_counter = node_address_v4_counter;
        size = 256;
    }
    table node_address_v6 {
        key = { meta.dst_v6 : exact @name("dst_addr"); }
        actions = { to_node_address; @defaultonly not_node_address; }
        const default_action = not_node_address;
        pna_direct_counter = node_address_v6_counter;
        size = 256;
    }

    action to_service(bit<32> service_port_id, bit<32> backend_group, bit<8> flags, bit<32> affinity_timeout) {
        meta.is_service = true;
        meta.service_port_id = service_port_id;
        meta.backend_group = backend_group;
        meta.service_flags = flags;
        meta.affinity_timeout = affinity_timeout;
    }
    action not_a_service() { meta.is_service = false; }
    table service_frontend_v4 {
        key = {
            meta.dst_v4 : exact @name("dst_addr");
            meta.protocol : exact @name("protocol");
            meta.dst_port : exact @name("dst_port");
        }
        actions = { to_service; @defaultonly not_a_service; }
        const default_action = not_a_service;
        pna_direct_counter = service_frontend_v4_counter;
        size = 65536;
    }
    table service_frontend_v6 {
        key = {
            meta.dst_v6 : exact @name("dst_addr");
            meta.protocol : exact @name("protocol");
            meta.dst_port : exact @name("dst_port");
        }
        actions = { to_service; @defaultonly not_a_service; }
        const default_action = not_a_service;
        pna_direct_counter = service_frontend_v6_counter;
        size = 65536;
    }
    table node_port_v4 {
        key = { meta.protocol : exact @name("protocol"); meta.dst_port : exact @name("dst_port"); }
        actions = { to_service; @defaultonly not_a_service; }
        const default_action = not_a_service;
        pna_direct_counter = node_port_v4_counter;
        size = 16384;
    }
    table node_port_v6 {
        key = { meta.protocol : exact @name("protocol"); meta.dst_port : exact @name("dst_port"); }
        actions = { to_service; @defaultonly not_a_service; }
        const default_action = not_a_service;
        pna_direct_counter = node_port_v6_counter;
        size = 16384;
    }

    action maglev_group(bit<32> bucket_count) { meta.bucket_count = bucket_count; }
    action reject_empty_group() { meta.drop_reason = 6; }   // answered with TCP RST / ICMP unreachable
    action drop_empty_group() { meta.drop_reason = 6; }
    action drop_unknown_group() { meta.drop_reason = 7; }
    table backend_group {
        key = { meta.backend_group : exact @name("backend_group"); }
        actions = { maglev_group; reject_empty_group; drop_empty_group; @defaultonly drop_unknown_group; }
        const default_action = drop_unknown_group;
        pna_direct_counter = backend_group_counter;
        size = 131072;
    }

    action affinity_backend_v4(bit<32> addr, bit<16> port) { meta.have_backend = true; meta.dst_v4 = addr; meta.dst_port = port; }
    action affinity_backend_v6(bit<128> addr, bit<16> port) { meta.have_backend = true; meta.dst_v6 = addr; meta.dst_port = port; }
    action no_affinity() { meta.have_backend = false; }
    table affinity_v4 {
        key = { meta.backend_group : exact @name("backend_group"); meta.src_v4 : exact @name("client_addr"); }
        actions = { affinity_backend_v4; @defaultonly no_affinity; }
        const default_action = no_affinity;
        add_on_miss = true;
        pna_idle_timeout = PNA_IdleTimeout_t.AUTO_DELETE;
        size = 262144;
    }
    table affinity_v6 {
        key = { meta.backend_group : exact @name("backend_group"); meta.src_v6 : exact @name("client_addr"); }
        actions = { affinity_backend_v6; @defaultonly no_affinity; }
        const default_action = no_affinity;
        add_on_miss = true;
        pna_idle_timeout = PNA_IdleTimeout_t.AUTO_DELETE;
        size = 262144;
    }

    action set_backend_v4(bit<32> addr, bit<16> port) { meta.have_backend = true; meta.dst_v4 = addr; meta.dst_port = port; }
    action set_backend_v6(bit<128> addr, bit<16> port) { meta.have_backend = true; meta.dst_v6 = addr; meta.dst_port = port; }
    action drop_missing_bucket() { meta.have_backend = false; meta.drop_reason = 6; }
    table maglev_backend_v4 {
        key = { meta.backend_group : exact @name("backend_group"); meta.bucket : exact @name("bucket"); }
        actions = { set_backend_v4; @defaultonly drop_missing_bucket; }
        const default_action = drop_missing_bucket;
        pna_direct_counter = maglev_backend_v4_counter;
        size = 16777216;
    }
    table maglev_backend_v6 {
        key = { meta.backend_group : exact @name("backend_group"); meta.bucket : exact @name("bucket"); }
        actions = { set_backend_v6; @defaultonly drop_missing_bucket; }
        const default_action = drop_missing_bucket;
        pna_direct_counter = maglev_backend_v6_counter;
        size = 16777216;
    }

    // ---- policy: IP-set classification, then ACLs per endpoint and direction -------------------
    action set_src_sets(set_bits_t sets) { meta.src_sets = sets; }
    action no_src_sets() { meta.src_sets = 0; }
    action set_dst_sets(set_bits_t sets) { meta.dst_sets = sets; }
    action no_dst_sets() { meta.dst_sets = 0; }
    table ip_set_src_v4 {
        key = { meta.src_v4 : lpm @name("src_addr"); }
        actions = { set_src_sets; @defaultonly no_src_sets; }
        const default_action = no_src_sets;
        pna_direct_counter = ip_set_src_v4_counter;
        size = 65536;
    }
    table ip_set_src_v6 {
        key = { meta.src_v6 : lpm @name("src_addr"); }
        actions = { set_src_sets; @defaultonly no_src_sets; }
        const default_action = no_src_sets;
        pna_direct_counter = ip_set_src_v6_counter;
        size = 65536;
    }
    table ip_set_dst_v4 {
        key = { meta.dst_v4 : lpm @name("dst_addr"); }
        actions = { set_dst_sets; @defaultonly no_dst_sets; }
        const default_action = no_dst_sets;
        pna_direct_counter = ip_set_dst_v4_counter;
        size = 65536;
    }
    table ip_set_dst_v6 {
        key = { meta.dst_v6 : lpm @name("dst_addr"); }
        actions = { set_dst_sets; @defaultonly no_dst_sets; }
        const default_action = no_dst_sets;
        pna_direct_counter = ip_set_dst_v6_counter;
        size = 65536;
    }

    action acl_allow() { meta.allowed = true; }
    action acl_deny() { meta.allowed = false; }
    table acl_egress {
        key = {
            meta.src_endpoint : exact @name("endpoint_id");
            meta.dst_sets : ternary @name("dst_sets");
            meta.protocol : ternary @name("protocol");
            meta.dst_port : range @name("dst_port");
        }
        actions = { acl_allow; @defaultonly acl_deny; }
        const default_action = acl_deny;
        pna_direct_counter = acl_egress_counter;
        size = 65536;
    }
    table acl_ingress {
        key = {
            meta.dst_endpoint : exact @name("endpoint_id");
            meta.src_sets : ternary @name("src_sets");
            meta.protocol : ternary @name("protocol");
            meta.dst_port : range @name("dst_port");
        }
        actions = { acl_allow; @defaultonly acl_deny; }
        const default_action = acl_deny;
        pna_direct_counter = acl_ingress_counter;
        size = 65536;
    }

    // ---- forwarding ----------------------------------------------------------------------------
    action deliver_local(bit<32> port, bit<32> endpoint_id) { meta.deliver_local = true; meta.out_port = port; meta.dst_endpoint = endpoint_id; }
    action deliver_host(bit<32> port) { meta.out_port = port; }
    action route_via(bit<32> next_hop_id) { meta.next_hop_id = next_hop_id; }
    action drop_no_route() { meta.drop_reason = 5; }
    table fib_v4 {
        key = { meta.dst_v4 : lpm @name("dst_addr"); }
        actions = { deliver_local; deliver_host; route_via; @defaultonly drop_no_route; }
        const default_action = drop_no_route;
        pna_direct_counter = fib_v4_counter;
        size = 65536;
    }
    table fib_v6 {
        key = { meta.dst_v6 : lpm @name("dst_addr"); }
        actions = { deliver_local; deliver_host; route_via; @defaultonly drop_no_route; }
        const default_action = drop_no_route;
        pna_direct_counter = fib_v6_counter;
        size = 65536;
    }

    // Encapsulation headers are added by the deparser from these fields on a real target.
    action via_direct_v4(bit<32> node_addr, bit<32> port) { meta.out_port = port; }
    action via_direct_v6(bit<128> node_addr, bit<32> port) { meta.out_port = port; }
    action via_vxlan_v4(bit<32> vtep_addr, bit<24> vni, bit<32> port) { meta.out_port = port; }
    action via_vxlan_v6(bit<128> vtep_addr, bit<24> vni, bit<32> port) { meta.out_port = port; }
    table next_hop {
        key = { meta.next_hop_id : exact @name("next_hop_id"); }
        actions = { via_direct_v4; via_direct_v6; via_vxlan_v4; via_vxlan_v6; @defaultonly drop_no_route; }
        const default_action = drop_no_route;
        pna_direct_counter = next_hop_counter;
        size = 4096;
    }

    apply {
        meta.in_port = (bit<32>) istd.input_port;
        meta.is_v6 = hdr.ipv6.isValid();
        if (hdr.ipv4.isValid()) { meta.src_v4 = hdr.ipv4.src_addr; meta.dst_v4 = hdr.ipv4.dst_addr; }
        if (hdr.ipv6.isValid()) { meta.src_v6 = hdr.ipv6.src_addr; meta.dst_v6 = hdr.ipv6.dst_addr; }
        if (hdr.ports.isValid()) { meta.src_port = hdr.ports.src_port; meta.dst_port = hdr.ports.dst_port; }
        meta.allowed = true;

        port_info.apply();
        if (!meta.port_ok) { drop_reasons.count(1); drop_packet(); return; }
        if (meta.from_endpoint) {
            if (meta.is_v6) { endpoint_by_ip_v6.apply(); } else { endpoint_by_ip_v4.apply(); }
            if (meta.spoofed) { drop_reasons.count(2); drop_packet(); return; }
        }
        if (meta.is_v6) { conntrack_v6.apply(); } else { conntrack_v4.apply(); }

        if (!meta.known_flow) {
            if (meta.is_v6) { service_frontend_v6.apply(); } else { service_frontend_v4.apply(); }
            if (!meta.is_service) {
                if (meta.is_v6) { node_address_v6.apply(); } else { node_address_v4.apply(); }
                if (meta.is_node_address) {
                    if (meta.is_v6) { node_port_v6.apply(); } else { node_port_v4.apply(); }
                }
            }
            if (meta.is_service) {
                if ((meta.service_flags & FLAG_LOCAL_PODS_USE_INTERNAL) != 0 && meta.from_endpoint) {
                    meta.backend_group = meta.service_port_id << 1;
                }
                switch (backend_group.apply().action_run) {
                    reject_empty_group: { drop_reasons.count(6); drop_packet(); return; }  // RST/ICMP by the target
                    drop_empty_group: { drop_reasons.count(6); drop_packet(); return; }
                    drop_unknown_group: { drop_reasons.count(7); drop_packet(); return; }
                    default: { }
                }
                if ((meta.service_flags & FLAG_AFFINITY) != 0) {
                    if (meta.is_v6) { affinity_v6.apply(); } else { affinity_v4.apply(); }
                }
                if (!meta.have_backend) {
                    bit<32> h;
                    if ((meta.service_flags & FLAG_AFFINITY) != 0) {
                        h = meta.is_v6 ? flow_hash.get_hash(meta.src_v6) : flow_hash.get_hash(meta.src_v4);
                    } else if (meta.is_v6) {
                        h = flow_hash.get_hash({meta.src_v6, meta.dst_v6, meta.protocol, meta.src_port, meta.dst_port});
                    } else {
                        h = flow_hash.get_hash({meta.src_v4, meta.dst_v4, meta.protocol, meta.src_port, meta.dst_port});
                    }
                    meta.bucket = h % meta.bucket_count;
                    if (meta.is_v6) { maglev_backend_v6.apply(); } else { maglev_backend_v4.apply(); }
                    if (!meta.have_backend) { drop_reasons.count(6); drop_packet(); return; }
                }
            }
            if (meta.from_endpoint) {
                if (meta.is_v6) { ip_set_dst_v6.apply(); } else { ip_set_dst_v4.apply(); }
                acl_egress.apply();
                if (!meta.allowed) { drop_reasons.count(3); drop_packet(); return; }
            }
        }

        if (meta.is_v6) { fib_v6.apply(); } else { fib_v4.apply(); }
        if (meta.drop_reason == 5) { drop_reasons.count(5); drop_packet(); return; }
        if (meta.next_hop_id != 0) {
            next_hop.apply();
            if (meta.drop_reason == 5) { drop_reasons.count(5); drop_packet(); return; }
        } else if (meta.deliver_local && !meta.known_flow && !meta.from_host) {
            if (meta.is_v6) { ip_set_src_v6.apply(); } else { ip_set_src_v4.apply(); }
            acl_ingress.apply();
            if (!meta.allowed) { drop_reasons.count(4); drop_packet(); return; }
        }
        if (!meta.known_flow) {
            meta.ct_state = 0;
            ct_timeout.apply();  // the learned entries' idle timeout (both directions, see conntrack)
        }
        send_to_port((PortId_t) meta.out_port);
    }
}

control main_deparser(packet_out pkt, inout headers_t hdr, in metadata_t meta,
                      in pna_main_output_metadata_t ostd) {
    apply {
        // Write the translated addresses and ports back before emitting (checksums omitted here).
        if (hdr.ipv4.isValid()) { hdr.ipv4.src_addr = meta.src_v4; hdr.ipv4.dst_addr = meta.dst_v4; }
        if (hdr.ipv6.isValid()) { hdr.ipv6.src_addr = meta.src_v6; hdr.ipv6.dst_addr = meta.dst_v6; }
        if (hdr.ports.isValid()) { hdr.ports.src_port = meta.src_port; hdr.ports.dst_port = meta.dst_port; }
        pkt.emit(hdr.ethernet);
        pkt.emit(hdr.ipv4);
        pkt.emit(hdr.ipv6);
        pkt.emit(hdr.ports);
        pkt.emit(hdr.tcp);
    }
}

PNA_NIC(main_parser(), pre_control(), ingress(), main_deparser()) main;
