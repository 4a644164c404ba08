"""Every validation rule of the kgslb CRs, as a table: the invalid spec, and the message that
names the object, the field (as written in the CR), the value and what is allowed."""

from __future__ import annotations

from typing import Any

import pytest

from services.reconciler.plan import plan
from shared.models import (
    ObjectKind,
    ObjectRef,
    ObservedObject,
    PolicyKind,
    PolicyObject,
    PolicyRef,
    PolicyState,
)
from shared.wire import encode

CONFIG = PolicyRef(kind=PolicyKind.GSLB_CONFIG, namespace="avi-system", name="gc-1")
GDP = PolicyRef(kind=PolicyKind.GLOBAL_DEPLOYMENT_POLICY, namespace="avi-system", name="global-gdp")
RULE = PolicyRef(kind=PolicyKind.GSLB_HOST_RULE, namespace="avi-system", name="hello-rule")
HELLO = "hello.avi.iberia.local"
SOA = {"mname": "g-dns.iberia.local.", "rname": "hostmaster.iberia.local."}
CONFIG_SPEC: dict[str, Any] = {
    "memberClusters": [{"clusterContext": c} for c in ("s1az1", "s1az2", "s2")],
    "zones": [{"name": "avi.iberia.local", "soa": SOA}],
}
GDP_SPEC: dict[str, Any] = {
    "matchRules": {"appSelector": {"label": {"app": "gslb"}}},
    "trafficSplit": [{"cluster": "s1az1", "weight": 6}, {"cluster": "s2", "weight": 2}],
}
MEMBERS = "(allowed: s1az1, s1az2, s2)"
OBSERVED = {
    o.ref: o
    for o in (
        ObservedObject(
            ref=ObjectRef(cluster=c, kind=ObjectKind.INGRESS, namespace="default", name="hello"),
            resource_version="1",
            labels={"app": "gslb"},
            hosts=[HELLO],
            vips=[vip],
        )
        for c, vip in (("s1az1", "127.10.25.46"), ("s2", "127.10.23.40"))
    )
}


def config(**fields: Any) -> dict[str, Any]:
    return {**CONFIG_SPEC, **fields}


def zone(**fields: Any) -> dict[str, Any]:
    return config(zones=[{"name": "avi.iberia.local", "soa": SOA, **fields}])


def record(rtype: str, value: str, name: str = "test") -> dict[str, Any]:
    return zone(records=[{"name": name, "type": rtype, "value": value}])


def gdp(**fields: Any) -> dict[str, Any]:
    return {**GDP_SPEC, **fields}


def algorithm(**fields: Any) -> dict[str, Any]:
    return gdp(poolAlgorithmSettings=fields)


def monitor(**fields: Any) -> dict[str, Any]:
    return gdp(healthMonitorTemplate=fields)


def rule(**fields: Any) -> dict[str, Any]:
    return {"fqdn": HELLO, **fields}


# One rule per row: (case, spec, the message it must contain).
# fmt: off
CONFIG_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("member listed twice", config(memberClusters=[{"clusterContext": "s1"}, {"clusterContext": "s1"}]), "spec.memberClusters[1].clusterContext = 's1': listed twice"),
    ("empty member name", config(memberClusters=[{"clusterContext": ""}]), "spec.memberClusters[0].clusterContext = '': String should have at least 1 character"),
    ("negative refresh", config(refreshInterval=-1), "spec.refreshInterval = -1: Input should be greater than or equal to 0"),
    ("unknown log level", config(logLevel="TRACE"), "spec.logLevel = 'TRACE': Input should be 'DEBUG', 'INFO', 'WARNING', 'WARN' or 'ERROR'"),
    ("zone listed twice", config(zones=[{"name": "a.local", "soa": SOA}, {"name": "A.local.", "soa": SOA}]), "spec.zones[1].name = 'A.local.': listed twice"),
    ("malformed zone name", config(zones=[{"name": "bad name", "soa": SOA}]), "spec.zones[0].name = 'bad name': String should match pattern"),
    ("zone without soa", config(zones=[{"name": "avi.iberia.local"}]), "spec.zones[0].soa: Field required"),
    ("soa serial too big", zone(soa={**SOA, "serial": 2**32}), "spec.zones[0].soa.serial = 4294967296: Input should be less than or equal to 4294967295"),
    ("malformed glue", zone(nameservers=[{"name": "g-dns.iberia.local.", "glue": ["10.0.0.300"]}]), "spec.zones[0].nameservers[0].glue[0] = '10.0.0.300': '10.0.0.300' does not appear to be an IPv4 or IPv6 address"),
    ("unknown unhandled policy", zone(unhandled="ignore"), "spec.zones[0].unhandled = 'ignore': Input should be 'respond' or 'drop'"),
    ("A record not IPv4", record("A", "10.0.0.300"), "spec.zones[0].records[0].value = '10.0.0.300': not an IPv4 address (type A)"),
    ("AAAA record not IPv6", record("AAAA", "10.0.0.1"), "spec.zones[0].records[0].value = '10.0.0.1': not an IPv6 address (type AAAA)"),
    ("CNAME not a name", record("CNAME", "not a name"), "spec.zones[0].records[0].value = 'not a name': not a DNS name (type CNAME)"),
    ("MX malformed", record("MX", "mail.avi.iberia.local"), "spec.zones[0].records[0].value = 'mail.avi.iberia.local': not '<preference> <exchange>' (type MX)"),
    ("SRV malformed", record("SRV", "0 5 99999 sip"), "spec.zones[0].records[0].value = '0 5 99999 sip': not '<priority> <weight> <port> <target>' (type SRV)"),
    ("record outside zone", record("A", "10.0.0.1", name="www.other.local."), "spec.zones[0].records[0].name = 'www.other.local.': outside zone avi.iberia.local"),
    ("unknown record type", record("HINFO", "x"), "spec.zones[0].records[0].type = 'HINFO': Input should be 'A', 'AAAA', 'CNAME', 'TXT', 'SRV', 'MX', 'NS' or 'PTR'"),
    ("latitude without longitude", config(memberClusters=[{"clusterContext": "s2", "location": {"latitude": 40.4}}]), "spec.memberClusters[0].location: latitude and longitude go together: set both or neither"),
    ("latitude out of range", config(memberClusters=[{"clusterContext": "s2", "location": {"latitude": 91, "longitude": 0}}]), "spec.memberClusters[0].location.latitude = 91: Input should be less than or equal to 90"),
    ("country not ISO alpha-2", config(memberClusters=[{"clusterContext": "s2", "location": {"country": "Spain"}}]), "spec.memberClusters[0].location.country = 'Spain': String should match pattern '^[A-Z]{2}$'"),
    ("unknown continent", config(memberClusters=[{"clusterContext": "s2", "location": {"continent": "EUROPE"}}]), "spec.memberClusters[0].location.continent = 'EUROPE': Input should be 'AF', 'AN', 'AS', 'EU', 'NA', 'OC' or 'SA'"),
    ("empty location", config(memberClusters=[{"clusterContext": "s2", "location": {}}]), "spec.memberClusters[0].location: a location needs latitude and longitude, a country or a continent"),
    ("delegation parent not a parent", zone(delegation={"parentZone": "example.com", "primary": "127.0.0.1", "tsigKey": {"name": "k", "secretRef": {"name": "s"}}}), "spec.zones[0].delegation.parentZone = 'example.com': parentZone 'example.com' is not a parent of avi.iberia.local"),
    ("delegation without nameservers", zone(delegation={"primary": "127.0.0.1", "tsigKey": {"name": "k", "secretRef": {"name": "s"}}}), "spec.zones[0].delegation: the zone lists no nameservers to delegate to"),
    ("delegation primary malformed", zone(delegation={"primary": "127.0.0.1:99999", "tsigKey": {"name": "k", "secretRef": {"name": "s"}}}), "spec.zones[0].delegation.primary = '127.0.0.1:99999': port '99999' is not 1-65535"),
    ("unknown field", config(leader="10.10.20.42"), "spec.leader = '10.10.20.42': unknown field (allowed: automaticHomeFailover, homeClusters, homeFailoverSeconds, logLevel, memberClusters, refreshInterval, zones)"),
]

GDP_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("split cluster not a member", gdp(trafficSplit=[{"cluster": "s3", "weight": 1}]), f"spec.trafficSplit[0].cluster = 's3': not a member cluster {MEMBERS}"),
    ("split cluster twice", gdp(trafficSplit=[{"cluster": "s2"}, {"cluster": "s2"}]), "spec.trafficSplit[1].cluster = 's2': listed twice"),
    ("weight 0", gdp(trafficSplit=[{"cluster": "s2", "weight": 0}]), "spec.trafficSplit[0].weight = 0: Input should be greater than or equal to 1"),
    ("weight 21", gdp(trafficSplit=[{"cluster": "s2", "weight": 21}]), "spec.trafficSplit[0].weight = 21: Input should be less than or equal to 20"),
    ("weight not a number", gdp(trafficSplit=[{"cluster": "s2", "weight": "six"}]), "spec.trafficSplit[0].weight = 'six': Input should be a valid integer"),
    ("priority 101", gdp(trafficSplit=[{"cluster": "s2", "priority": 101}]), "spec.trafficSplit[0].priority = 101: Input should be less than or equal to 100"),
    ("priority -1", gdp(trafficSplit=[{"cluster": "s2", "priority": -1}]), "spec.trafficSplit[0].priority = -1: Input should be greater than or equal to 0"),
    ("misspelled split field", gdp(trafficSplit=[{"cluster": "s2", "wieght": 3}]), "spec.trafficSplit[0].wieght = 3: unknown field (allowed: cluster, priority, weight)"),
    ("match cluster not a member", gdp(matchClusters=[{"cluster": "s9"}]), f"spec.matchClusters[0].cluster = 's9': not a member cluster {MEMBERS}"),
    ("match cluster twice", gdp(matchClusters=[{"cluster": "s1az1"}, {"cluster": "s1az1"}]), "spec.matchClusters[1].cluster = 's1az1': listed twice"),
    ("syncVipOnly not a bool", gdp(matchClusters=[{"cluster": "s2", "syncVipOnly": "maybe"}]), "spec.matchClusters[0].syncVipOnly = 'maybe': Input should be a valid boolean"),
    ("ttl -1", gdp(ttl=-1), "spec.ttl = -1: Input should be greater than or equal to 0"),
    ("ttl above a day", gdp(ttl=86401), "spec.ttl = 86401: Input should be less than or equal to 86400"),
    ("FALLBACK_IP without fallbackIP", gdp(downResponse={"type": "FALLBACK_IP"}), "spec.downResponse.type = FALLBACK_IP needs spec.downResponse.fallbackIP"),
    ("fallbackIP without FALLBACK_IP", gdp(downResponse={"type": "EMPTY", "fallbackIP": "127.0.0.9"}), "spec.downResponse.fallbackIP = '127.0.0.9': only used with type FALLBACK_IP (type is EMPTY)"),
    ("malformed fallbackIP", gdp(downResponse={"type": "FALLBACK_IP", "fallbackIP": "10.0.0.300"}), "spec.downResponse.fallbackIP = '10.0.0.300': '10.0.0.300' does not appear to be an IPv4 or IPv6 address"),
    ("unknown down response", gdp(downResponse={"type": "SERVFAIL"}), "spec.downResponse.type = 'SERVFAIL': Input should be 'NONE', 'ALL_RECORDS', 'FALLBACK_IP' or 'EMPTY'"),
    ("monitor ref and template", gdp(healthMonitorRefs=["hm"], healthMonitorTemplate={"kind": "http"}), "spec.healthMonitorRefs and spec.healthMonitorTemplate are both set: use one of them"),
    ("monitor refs", gdp(healthMonitorRefs=["hm1"]), "spec.healthMonitorRefs = ['hm1']: references to controller monitors are not supported (allowed: an inline spec.healthMonitorTemplate)"),
    ("unknown monitor kind", monitor(kind="icmp"), "spec.healthMonitorTemplate.kind = 'icmp': Input should be 'http', 'https', 'tcp' or 'none'"),
    ("unknown monitor method", monitor(method="POST"), "spec.healthMonitorTemplate.method = 'POST': Input should be 'HEAD' or 'GET'"),
    ("bad expected code", monitor(expectedCodes=["600"]), "spec.healthMonitorTemplate.expectedCodes[0] = '600': String should match pattern"),
    ("monitor port 70000", monitor(port=70000), "spec.healthMonitorTemplate.port = 70000: Input should be less than or equal to 65535"),
    ("monitor interval 0", monitor(intervalSeconds=0), "spec.healthMonitorTemplate.intervalSeconds = 0: Input should be greater than 0"),
    ("timeout longer than interval", monitor(intervalSeconds=5, timeoutSeconds=6), "spec.healthMonitorTemplate.timeoutSeconds = 6.0: longer than intervalSeconds 5.0 (allowed: at most the interval)"),
    ("failures 0", monitor(failuresToDown=0), "spec.healthMonitorTemplate.failuresToDown = 0: Input should be greater than or equal to 1"),
    ("unknown algorithm", algorithm(lbAlgorithm="Random"), "spec.poolAlgorithmSettings.lbAlgorithm = 'Random': Input should be 'RoundRobin', 'ConsistentHash', 'Topology' or 'Geo'"),
    ("hashMask without ConsistentHash", algorithm(lbAlgorithm="RoundRobin", hashMask=24), "spec.poolAlgorithmSettings.hashMask = 24: only used with lbAlgorithm ConsistentHash (lbAlgorithm is RoundRobin)"),
    ("hashMask 0", algorithm(lbAlgorithm="ConsistentHash", hashMask=0), "spec.poolAlgorithmSettings.hashMask = 0: Input should be greater than or equal to 1"),
    ("hashMask 129", algorithm(lbAlgorithm="ConsistentHash", hashMask=129), "spec.poolAlgorithmSettings.hashMask = 129: Input should be less than or equal to 128"),
    ("Topology without a map", algorithm(lbAlgorithm="Topology"), "spec.poolAlgorithmSettings.topology: Topology needs at least one clientSubnet -> site rule"),
    ("map without Topology", algorithm(topology=[{"clientSubnet": "10.0.0.0/8", "site": "s2"}]), "spec.poolAlgorithmSettings.topology = ['10.0.0.0/8']: only used with lbAlgorithm Topology (lbAlgorithm is RoundRobin)"),
    ("malformed CIDR", algorithm(lbAlgorithm="Topology", topology=[{"clientSubnet": "10.0.0.0/33", "site": "s2"}]), "spec.poolAlgorithmSettings.topology[0].clientSubnet = '10.0.0.0/33': '10.0.0.0/33' does not appear to be an IPv4 or IPv6 network"),
    ("subnet twice", algorithm(lbAlgorithm="Topology", topology=[{"clientSubnet": "10.0.0.0/8", "site": "s2"}, {"clientSubnet": "10.1.0.0/8", "site": "s1az1"}]), "spec.poolAlgorithmSettings.topology[1].clientSubnet = '10.0.0.0/8': listed twice"),
    ("topology site unknown", algorithm(lbAlgorithm="Topology", topology=[{"clientSubnet": "10.0.0.0/8", "site": "dc9"}]), f"spec.poolAlgorithmSettings.topology[0].site = 'dc9': not a member cluster or third-party site {MEMBERS}"),
    ("fallback with RoundRobin", algorithm(fallbackAlgorithm={"lbAlgorithm": "RoundRobin"}), "spec.poolAlgorithmSettings.fallbackAlgorithm: RoundRobin always decides, so it takes no fallback (allowed with ConsistentHash, Topology or Geo)"),
    ("Geo without a located member cluster", algorithm(lbAlgorithm="Geo"), "spec.poolAlgorithmSettings.lbAlgorithm: Geo needs a location on at least one member cluster (GSLBConfig spec.memberClusters[].location: latitude and longitude, country or continent); none has one"),
    ("Topology as fallback", algorithm(lbAlgorithm="ConsistentHash", fallbackAlgorithm={"lbAlgorithm": "Topology"}), "spec.poolAlgorithmSettings.fallbackAlgorithm.lbAlgorithm = 'Topology': Input should be 'RoundRobin' or 'ConsistentHash'"),
    ("fallback hashMask without ConsistentHash", algorithm(lbAlgorithm="Topology", topology=[{"clientSubnet": "10.0.0.0/8", "site": "s2"}], fallbackAlgorithm={"lbAlgorithm": "RoundRobin", "hashMask": 24}), "spec.poolAlgorithmSettings.fallbackAlgorithm.hashMask = 24: only used with fallback lbAlgorithm ConsistentHash"),
    ("In without values", gdp(matchRules={"appSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]}}), "spec.matchRules.appSelector.matchExpressions[0].values = []: In needs values"),
    ("Exists with values", gdp(matchRules={"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "Exists", "values": ["x"]}]}}), "spec.matchRules.namespaceSelector.matchExpressions[0].values = ['x']: Exists takes no values"),
    ("unknown operator", gdp(matchRules={"appSelector": {"matchExpressions": [{"key": "app", "operator": "Like", "values": ["g"]}]}}), "spec.matchRules.appSelector.matchExpressions[0].operator = 'Like': Input should be 'In', 'NotIn', 'Exists' or 'DoesNotExist'"),
    ("label value not a string", gdp(matchRules={"appSelector": {"label": {"app": 7}}}), "spec.matchRules.appSelector.label.app = 7: Input should be a valid string"),
    ("malformed default domain", gdp(defaultDomain="avi iberia"), "spec.defaultDomain = 'avi iberia': String should match pattern"),
    ("answers 0", gdp(answers=0), "spec.answers = 0: Input should be greater than or equal to 1"),
    ("unknown field", gdp(trafficsplit=[]), "spec.trafficsplit = []: unknown field (allowed: answers, defaultDomain, downResponse, healthMonitorRefs, healthMonitorTemplate, matchClusters, matchRules, poolAlgorithmSettings, trafficSplit, ttl)"),
]

RULE_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("no fqdn", {"ttl": 5}, "spec.fqdn: Field required"),
    ("malformed fqdn", rule(fqdn="hello world"), "spec.fqdn = 'hello world': String should match pattern"),
    ("malformed third-party vip", rule(thirdPartyMembers=[{"vip": "10.1.1", "site": "dc3"}]), "spec.thirdPartyMembers[0].vip = '10.1.1': '10.1.1' does not appear to be an IPv4 or IPv6 address"),
    ("third-party vip twice", rule(thirdPartyMembers=[{"vip": "127.3.0.1", "site": "dc3"}, {"vip": "127.3.0.1", "site": "dc4"}]), "spec.thirdPartyMembers[1].vip = '127.3.0.1': listed twice"),
    ("third-party site is a member", rule(thirdPartyMembers=[{"vip": "127.3.0.1", "site": "s2"}]), "spec.thirdPartyMembers[0].site = 's2': is a member cluster; a third-party member needs a site name of its own"),
    ("publicIP cluster not a member", rule(publicIP=[{"cluster": "s9", "ip": "127.20.0.1"}]), f"spec.publicIP[0].cluster = 's9': not a member cluster {MEMBERS}"),
    ("publicIP cluster twice", rule(publicIP=[{"cluster": "s2", "ip": "127.20.0.1"}, {"cluster": "s2", "ip": "127.20.0.2"}]), "spec.publicIP[1].cluster = 's2': listed twice"),
    ("malformed public IP", rule(publicIP=[{"cluster": "s2", "ip": "2001:db8::zz"}]), "spec.publicIP[0].ip = '2001:db8::zz': '2001:db8::zz' does not appear to be an IPv4 or IPv6 address"),
    ("split site unknown", rule(trafficSplit=[{"cluster": "dc3", "weight": 2}]), "spec.trafficSplit[0].cluster = 'dc3': not a member cluster (allowed: s1az1, s1az2, s2)"),
    ("ttl too big", rule(ttl=100000), "spec.ttl = 100000: Input should be less than or equal to 86400"),
    ("FALLBACK_IP without fallbackIP", rule(downResponse={"type": "GSLB_SERVICE_DOWN_RESPONSE_FALLBACK_IP"}), "spec.downResponse.type = FALLBACK_IP needs spec.downResponse.fallbackIP"),
    ("monitor ref and template", rule(healthMonitorRefs=["hm"], healthMonitorTemplate={}), "spec.healthMonitorRefs and spec.healthMonitorTemplate are both set"),
    ("Topology site unknown", rule(poolAlgorithmSettings={"lbAlgorithm": "Topology", "topology": [{"clientSubnet": "10.0.0.0/8", "site": "dc3"}]}), "spec.poolAlgorithmSettings.topology[0].site = 'dc3': not a member cluster or third-party site"),
    ("unknown field", rule(sitePersistence={"enabled": True}), "spec.sitePersistence: unknown field (allowed: downResponse, fqdn, healthMonitorRefs,"),
]
# fmt: on


def _status(kind_ref: PolicyRef, spec: dict[str, Any]) -> Any:
    objects = [PolicyObject(ref=kind_ref, spec=spec)]
    if kind_ref != CONFIG:
        objects.append(PolicyObject(ref=CONFIG, spec=CONFIG_SPEC))
    if kind_ref == RULE:
        objects.append(PolicyObject(ref=GDP, spec=GDP_SPEC))
    return plan(OBSERVED, {o.ref: o for o in objects}).statuses[kind_ref]


def _assert_rejected(status: Any, prefix: str, message: str) -> None:
    assert status.state == PolicyState.REJECTED
    assert status.message.startswith(prefix), status.message
    assert message in status.message, status.message


@pytest.mark.parametrize(
    ("case", "spec", "message"), CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES]
)
def test_invalid_gslbconfig_is_rejected_with_field_value_and_rule(
    case: str, spec: dict[str, Any], message: str
) -> None:
    _assert_rejected(_status(CONFIG, spec), "GSLBConfig avi-system/gc-1: ", message)


@pytest.mark.parametrize(("case", "spec", "message"), GDP_CASES, ids=[c[0] for c in GDP_CASES])
def test_invalid_gdp_is_rejected_with_field_value_and_rule(
    case: str, spec: dict[str, Any], message: str
) -> None:
    _assert_rejected(_status(GDP, spec), "GlobalDeploymentPolicy avi-system/global-gdp: ", message)


@pytest.mark.parametrize(("case", "spec", "message"), RULE_CASES, ids=[c[0] for c in RULE_CASES])
def test_invalid_host_rule_is_rejected_with_field_value_and_rule(
    case: str, spec: dict[str, Any], message: str
) -> None:
    _assert_rejected(_status(RULE, spec), "GSLBHostRule avi-system/hello-rule: ", message)


def test_every_problem_of_an_object_is_reported_at_once() -> None:
    spec = gdp(
        ttl=-1,
        trafficSplit=[{"cluster": "s1az1", "weight": 0}],
        downResponse={"type": "FALLBACK_IP"},
    )
    message = _status(GDP, spec).message
    assert "spec.ttl = -1" in message
    assert "spec.trafficSplit[0].weight = 0" in message


def test_every_valid_kind_and_field_is_accepted() -> None:
    full_gdp = gdp(
        matchRules={
            "appSelector": {
                "label": {"app": "gslb"},
                "matchLabels": {"tier": "web"},
                "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]}],
            },
            "namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Exists"}]},
        },
        matchClusters=[{"cluster": "s1az1"}, {"cluster": "s2", "syncVipOnly": True}],
        ttl=30,
        healthMonitorTemplate={
            "kind": "https",
            "method": "GET",
            "path": "/healthz",
            "port": 8443,
            "expectedCodes": ["200", "3xx"],
            "bodyContains": "ok",
            "tlsVerify": True,
            "intervalSeconds": 5,
            "timeoutSeconds": 2,
            "successesToUp": 2,
            "failuresToDown": 2,
        },
        poolAlgorithmSettings={
            "lbAlgorithm": "Topology",
            "topology": [{"clientSubnet": "10.0.0.0/8", "site": "s2"}],
            "fallbackAlgorithm": {"lbAlgorithm": "ConsistentHash", "hashMask": 24},
        },
        downResponse={"type": "FALLBACK_IP", "fallbackIP": "127.0.0.9"},
        defaultDomain="avi.iberia.local",
        answers=2,
    )
    assert _status(GDP, full_gdp).state == PolicyState.ACCEPTED
    full_rule = rule(
        ttl=5,
        trafficSplit=[{"cluster": "dc3", "weight": 3, "priority": 20}],
        thirdPartyMembers=[{"vip": "127.3.0.1", "site": "dc3"}],
        publicIP=[{"cluster": "s2", "ip": "127.20.0.1"}],
        downResponse={"type": "ALL_RECORDS"},
        poolAlgorithmSettings={"lbAlgorithm": "ConsistentHash", "hashMask": 16},
        healthMonitorTemplate={"kind": "tcp"},
    )
    assert _status(RULE, full_rule).state == PolicyState.ACCEPTED


def test_a_geo_service_carries_the_locations_of_its_member_clusters_only() -> None:
    located = config(
        memberClusters=[
            {"clusterContext": "s1az1", "location": {"country": "ES", "continent": "EU"}},
            {"clusterContext": "s1az2", "location": {"latitude": 50.1, "longitude": 8.7}},
            {"clusterContext": "s2"},
        ]
    )
    objects = [
        PolicyObject(ref=CONFIG, spec=located),
        PolicyObject(ref=GDP, spec=algorithm(lbAlgorithm="GSLB_ALGORITHM_GEO")),
    ]
    result = plan(OBSERVED, {o.ref: o for o in objects})
    assert result.statuses[GDP].state == PolicyState.ACCEPTED
    service = result.services[HELLO]
    assert service.algorithm == "Geo" and service.fallback_algorithm == "RoundRobin"
    # s1az2 has a location but no member of this name; s2 has members but no location.
    assert [(s.site, s.location.country) for s in service.site_locations] == [("s1az1", "ES")]
    assert b"siteLocations" in encode(service)


def test_a_service_that_is_not_geo_encodes_without_site_locations() -> None:
    objects = [PolicyObject(ref=CONFIG, spec=CONFIG_SPEC), PolicyObject(ref=GDP, spec=GDP_SPEC)]
    service = plan(OBSERVED, {o.ref: o for o in objects}).services[HELLO]
    assert b"siteLocations" not in encode(service)
