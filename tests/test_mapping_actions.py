"""Each action, the presets, subscriptions, the settings check and the Mapper interface."""

from __future__ import annotations

import copy

import pytest

from edgeproxy.mapping import (
    Mapped,
    Mapper,
    MappingConfigError,
    Output,
    validate_subscriptions,
)

KEYS = {"api_key": "k", "secret_key": "s"}
WEB = {"library": {"name": "analytics.js"}, "page": {"referrer": "https://ref.test/"},
       "userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"}


def track(event="Clicked", **extra):
    return {"type": "track", "event": event, "messageId": "m-1", "userId": "u1", "anonymousId": "a1",
            "timestamp": "2024-03-14T15:09:26.535Z", "properties": {"x": 1}, "context": copy.deepcopy(WEB), **extra}


def mapper(*subs, **settings):
    return Mapper({**KEYS, **settings, "subscriptions": list(subs)})


def items(mapped: Mapped):
    assert mapped.errors == []
    return [(o.endpoint, o.item, o.options) for o in mapped.outputs]


def test_presets_apply_without_subscriptions() -> None:
    m = Mapper(KEYS)
    assert [o.endpoint for o in m.map(track()).outputs] == ["httpapi"]
    page = m.map({"type": "page", "name": "Pricing", "anonymousId": "a"}).outputs[0].item
    assert page["event_type"] == "Viewed Pricing"
    assert m.map({"type": "screen", "anonymousId": "a"}).outputs[0].item["event_type"] == "Viewed "
    assert [o.endpoint for o in m.map({"type": "identify", "userId": "u"}).outputs] == ["identify"]
    assert m.map({"type": "group", "groupId": "g", "userId": "u"}).outputs == []  # opt-in
    assert m.map({"type": "alias", "previousId": "a", "userId": "u"}).outputs == []  # opt-in
    order = m.map(track("Order Completed", properties={"revenue": 10}))
    assert order.outputs[0].item["revenue"] == 10 and order.outputs[0].item["revenueType"] == "Purchase"


def test_log_event_v2_item() -> None:
    (endpoint, item, options), = items(Mapper(KEYS).map(track()))
    assert endpoint == "httpapi" and options is None
    assert item == {
        "os_name": "Windows", "os_version": "124", "device_model": "Windows", "user_id": "u1", "device_id": "a1",
        "event_type": "Clicked", "event_properties": {"x": 1}, "platform": "Web", "time": 1710428966535,
        "user_properties": {"$setOnce": {"initial_referrer": "https://ref.test/"}, "$set": {"referrer": "https://ref.test/"}},
        "library": "analytics.js", "insert_id": "m-1",
    }
    assert "use_batch_endpoint" not in item and "products" not in item  # SPEC 4: leaks not reproduced


def test_mapped_insert_id_wins_and_message_is_not_mutated() -> None:
    m = mapper({"action": "logEventV2", "subscribe": 'type = "track"', "mapping": {"insert_id": {"@template": "x-{{messageId}}"}}})
    msg = track()
    before = copy.deepcopy(msg)
    assert items(m.map(msg))[0][1]["insert_id"] == "x-m-1"
    assert msg == before


def test_set_operators_replace_traits_operators_in_v2() -> None:
    m = mapper({"action": "logEventV2", "subscribe": 'type = "track"', "mapping": {"add": {"logins": 1}}})
    item = items(m.map(track(traits={"plan": "p", "$set": {"company": "A"}, "$add": {"old": 1}})))[0][1]
    assert item["user_properties"] == {"plan": "p", "$set": {"referrer": "https://ref.test/"},
                                       "$setOnce": {"initial_referrer": "https://ref.test/"}, "$add": {"logins": 1}}


def test_log_event_v1_merges_utm_with_traits_winning() -> None:
    msg = track(traits={"$set": {"referrer": "trait"}, "referrer": "gone"})
    msg["context"]["campaign"] = {"source": "s", "medium": ""}
    item = items(mapper({"action": "logEvent", "subscribe": 'type = "track"'}).map(msg))[0][1]
    assert item["user_properties"] == {"$set": {"utm_source": "s", "utm_medium": "", "referrer": "trait"},
                                       "$setOnce": {"initial_utm_source": "s", "initial_utm_medium": "", "initial_referrer": "https://ref.test/"}}


def test_identify_merge_lets_context_win_and_sends_segment_library() -> None:
    msg = {"type": "identify", "userId": "u", "traits": {"plan": "p", "$set": {"referrer": "t"}, "$unset": {"x": "-"}},
           "context": copy.deepcopy(WEB)}
    (endpoint, item, options), = items(Mapper(KEYS).map(msg))
    assert endpoint == "identify" and options is None
    assert item["user_properties"] == {"plan": "p", "$set": {"referrer": "https://ref.test/"},
                                       "$setOnce": {"initial_referrer": "https://ref.test/"}, "$unset": {"x": "-"}}
    assert item["library"] == "segment" and item["platform"] == "Web" and "insert_id" not in item


def test_platform_rules() -> None:
    m = Mapper(KEYS)
    for given, sent in [("ios", "iOS"), ("ANDROID", "Android"), ("iPadOS", "iPadOS"), ("web", "web")]:
        msg = track()
        msg["context"]["device"] = {"type": given}
        assert items(m.map(msg))[0][1]["platform"] == sent
    msg = track()
    msg["context"]["library"] = {"name": "analytics-node"}
    item = items(m.map(msg))[0][1]
    assert "platform" not in item and item["library"] == "analytics-node"


def test_library_without_library2_is_segment() -> None:
    m = mapper({"action": "logEventV2", "subscribe": 'type = "track"', "mapping": {"library2": {}}})
    assert items(m.map(track()))[0][1]["library"] == "segment"


def test_batch_endpoint_min_id_length_and_region() -> None:
    m = mapper({"action": "logEventV2", "subscribe": 'type = "track"', "mapping": {"use_batch_endpoint": True, "min_id_length": 3}})
    (endpoint, _, options), = items(m.map(track()))
    assert endpoint == "batch" and options == {"min_id_length": 3}
    m0 = mapper({"action": "logEventV2", "subscribe": 'type = "track"', "mapping": {"min_id_length": 0}})
    assert items(m0.map(track()))[0][2] is None


def test_purchase_per_product_revenue_and_insert_ids() -> None:
    m = mapper({"action": "logPurchase", "subscribe": 'type = "track"', "mapping": {"trackRevenuePerProduct": True}})
    msg = track("Order Completed", properties={"revenue": 50, "products": [
        {"productId": "a", "price": 10, "quantity": 2, "name": "lost"}, {"productId": "b", "revenue": 30}, {"productId": "c"}]})
    out = items(m.map(msg))
    main, *products = [i for _, i, _ in out]
    assert "revenue" not in main and main["insert_id"] == "m-1"
    assert [p["event_type"] for p in products] == ["Product Purchased"] * 3
    assert [p["insert_id"] for p in products] == ["m-1-2", "m-1-3", "m-1-4"]
    assert products[0]["event_properties"] == {"productId": "a", "price": 10, "quantity": 2}
    assert products[0]["revenue"] == 20 and products[0]["revenueType"] == "Purchase"
    assert products[1]["revenue"] == 30 and "revenue" not in products[2]
    assert "os_name" not in products[0]  # product events carry the mapped fields, not the parsed UA


def test_purchase_total_revenue_price_times_quantity_wins() -> None:
    out = items(Mapper(KEYS).map(track("Order Completed", properties={"revenue": 99, "price": 4, "quantity": 3,
                                                                         "products": [{"price": 1}]})))
    assert out[0][1]["revenue"] == 12 and out[0][1]["quantity"] == 3 and out[0][1]["price"] == 4
    assert "revenue" not in out[1][1]


def test_fractional_quantity_is_refused() -> None:
    mapped = Mapper(KEYS).map(track("Order Completed", properties={"price": 4, "quantity": 1.5}))
    assert mapped.outputs == [] and mapped.error == "Quantity must be an integer but it was a number."


def test_group_identify_two_outputs_in_order() -> None:
    m = mapper({"action": "groupIdentifyUser", "subscribe": 'type = "group"',
                "mapping": {"group_type": "company", "group_value": {"@path": "$.groupId"}}})
    out = items(m.map({"type": "group", "groupId": 12345, "userId": "u", "traits": {"n": 1}, "timestamp": "2024-03-14T15:09:26.535Z"}))
    assert [(e, o) for e, _, o in out] == [("identify", None), ("groupidentify", None)]
    assert out[0][1] == {"groups": {"company": "12345"}, "user_properties": {"company": "12345"}, "library": "segment",
                         "user_id": "u", "time": 1710428966535}
    assert out[1][1] == {"group_properties": {"n": 1}, "group_type": "company", "group_value": "12345", "library": "segment"}
    anonymous = items(m.map({"type": "group", "groupId": "g"}))
    assert [e for e, _, _ in anonymous] == ["groupidentify"]


def test_group_without_type_and_value_is_refused() -> None:
    mapped = mapper({"action": "groupIdentifyUser", "subscribe": 'type = "group"'}).map({"type": "group", "userId": "u"})
    assert mapped.errors == ["The root value is missing the required field 'group_type'. "
                             "The root value is missing the required field 'group_value'."]


def test_map_user() -> None:
    m = mapper({"action": "mapUser", "subscribe": 'type = "alias"', "mapping": {"min_id_length": 1}})
    assert items(m.map({"type": "alias", "previousId": "a", "userId": "b"})) == [
        ("usermap", {"user_id": "a", "global_user_id": "b", "min_id_length": 1}, {"min_id_length": 1})]


def test_several_subscriptions_concatenate_and_refusals_are_per_subscription() -> None:
    m = mapper({"action": "logEventV2", "subscribe": 'type = "track"'},
               {"action": "logEventV2", "subscribe": 'type = "track"', "mapping": {"time": {"@path": "$.properties.when"}}},
               {"action": "identifyUser", "subscribe": 'type = "track"'},
               {"action": "logEvent", "subscribe": 'event = "Other"'})
    mapped = m.map(track(properties={"when": "garbage"}))
    assert [o.endpoint for o in mapped.outputs] == ["httpapi", "identify"]
    assert mapped.errors == ["Timestamp must be a valid date-like string but it was not."]
    assert mapped.error == mapped.errors[0]


def test_replace_mapping_uses_only_the_given_fields() -> None:
    m = mapper({"action": "logEventV2", "subscribe": 'type = "track"', "replace_mapping": True,
                "mapping": {"event_type": {"@path": "$.event"}, "user_id": {"@path": "$.userId"}}})
    assert items(m.map(track()))[0][1] == {"event_type": "Clicked", "user_id": "u1", "library": "segment", "insert_id": "m-1"}


def test_device_id_from_identity_layer_only_replaces_the_default_mapping() -> None:
    assert items(Mapper(KEYS).map(track(), device_id="edge-1"))[0][1]["device_id"] == "edge-1"
    custom = mapper({"action": "logEventV2", "subscribe": 'type = "track"', "mapping": {"device_id": {"@path": "$.userId"}}})
    assert items(custom.map(track(), device_id="edge-1"))[0][1]["device_id"] == "u1"


def test_settings_problems_refuse_every_event_unless_lenient() -> None:
    # Each names the config key, then the reference's own message.
    refused = Mapper({"api_key": "k"}).map(track())
    assert refused.outputs == [] and refused.errors == []
    assert refused.error == ("amplitude.secret_key is not set: Segment's destination refuses every event without it "
                             "(its message: The root value is missing the required field 'secretKey'.)")
    region = Mapper({**KEYS, "region": "asia"}).map(track()).error
    assert region is not None and region.startswith("amplitude.region is 'asia': ")
    assert region.endswith('(its message: Endpoint Region must be one of: "north_america" or "europe".)')
    assert Mapper({}, strict_settings=False).map(track()).outputs


def test_bad_subscriptions_raise_with_every_problem() -> None:
    subs = [{"action": "logEventV3", "subscribe": 'type = "track"'},
            {"action": "logEventV2", "subscribe": 'type = "track" and'},
            {"action": "logEventV2", "subscribe": 'type = "track"', "mapping": "nope", "extra": 1}]
    with pytest.raises(MappingConfigError) as info:
        Mapper({**KEYS, "subscriptions": subs})
    problems = info.value.problems
    assert problems == validate_subscriptions(subs)
    assert any(p.startswith("[0].action: must be one of") for p in problems)
    assert any(p.startswith("[1].subscribe: expected a field") and "at position 19" in p for p in problems)
    assert "[2].extra: unknown key" in " ".join(problems) and any(p.startswith("[2].mapping:") for p in problems)


def test_non_object_message_is_an_error_not_an_exception() -> None:
    assert Mapper(KEYS).map(["not", "a", "dict"]).error  # type: ignore[arg-type]
    assert Output("httpapi", {}, None) == Output("httpapi", {}, None)
