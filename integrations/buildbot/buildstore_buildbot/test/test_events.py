"""The pure translation from Buildbot dicts to v1 events."""

import datetime

from twisted.trial import unittest

from buildstore_buildbot import events
from buildstore_buildbot.encoding import encode_event

UTC = datetime.timezone.utc
HEAD = "eb57b4930f682387ca57a2506b1dbd03f5144c04"


class TestValues(unittest.TestCase):
    def test_times_are_epoch_seconds(self):
        when = datetime.datetime(2026, 3, 12, 14, 7, 31, 377000, tzinfo=UTC)
        self.assertEqual(events.epoch(when), 1773324451.377)
        self.assertEqual(events.epoch(when.replace(tzinfo=None)), 1773324451.377)
        self.assertEqual(events.epoch(1773324451), 1773324451)
        self.assertIsNone(events.epoch(None))

    def test_property_values_a_document_cannot_hold_are_sent_as_text(self):
        # The daemon refuses a whole number outside 64 bits and a NUL in a key; a refused
        # build_started would cost the whole build.
        big = 1 << 63
        value = {"id": big, "n\x00": [-big, -big - 1, big - 1, True, 1.5, "x", None]}
        props = events.sourced_properties({"p": (value, "Set")})
        self.assertEqual(
            props["p"]["value"],
            {"id": str(big), "n\ufffd": [-big, str(-big - 1), big - 1, True, 1.5, "x", None]},
        )
        event = events.property_event("m1", 42, "huge", 10**30, "Build")
        self.assertEqual(event["value"], "1" + "0" * 30)
        self.assertEqual(events.property_event("m1", 42, "a\x00b", 1, None)["name"], "a\ufffdb")
        self.assertIn("a\ufffdb", events.sourced_properties({"a\x00b": (1, "x")}))
        self.assertEqual(events.property_event("m1", 42, "n", 7, "Build")["value"], 7)

    def test_keys_starting_with_a_dollar_are_sent_with_a_fullwidth_one(self):
        # The daemon refuses them: BSON would read {"$date": 1} as a date.
        props = events.sourced_properties({"$p": ({"$date": 1, "a$": ["$x"]}, "Set")})
        self.assertEqual(
            props, {"\uff04p": {"value": {"\uff04date": 1, "a$": ["$x"]}, "source": "Set"}}
        )
        self.assertEqual(events.property_event("m1", 42, "$oid", 1, None)["name"], "\uff04oid")

    def test_an_empty_name_and_values_nested_past_64_deep_are_sent_as_the_daemon_takes_them(self):
        props = events.sourced_properties({"": (1, "Set")})
        self.assertEqual(props, {"\ufffd": {"value": 1, "source": "Set"}})
        self.assertEqual(events.property_event("m1", 42, "", 1, None)["name"], "\ufffd")
        deep = 1
        for i in range(70):
            deep = [deep] if i % 2 else {"a": deep}
        sent = events.storable(deep)
        for _ in range(64):  # 64 arrays or objects are kept
            sent = sent["a"] if isinstance(sent, dict) else sent[0]
        self.assertIn("nested more than 64 deep", sent)
        self.assertEqual(events.storable({"a": [[{}]]}), {"a": [[{}]]})

    def test_results_pass_through_and_unknown_is_exception(self):
        self.assertEqual([events.result_code(r) for r in range(7)], list(range(7)))
        for odd in (None, 7, -1, True, "0"):
            self.assertEqual(events.result_code(odd), events.EXCEPTION)


class TestBuild(unittest.TestCase):
    build = {
        "buildid": 42,
        "number": 7,
        "started_at": datetime.datetime(2026, 3, 12, 14, 0, tzinfo=UTC),
        "complete_at": datetime.datetime(2026, 3, 12, 14, 5, tzinfo=UTC),
        "results": 2,
    }

    def test_multi_codebase_build_is_filed_under_the_default_codebase(self):
        stamps = [
            {"codebase": "docs", "revision": "1" * 40, "branch": "main", "repository": "d.git"},
            {"codebase": "", "revision": "", "branch": "", "repository": "x.git"},
        ]
        event = events.build_started("m1", self.build, "linux", sourcestamps=stamps)
        self.assertEqual(
            (event["changeset"], event["branch"], event["repository"], event["codebase"]),
            (None, None, "x.git", ""),
        )
        self.assertEqual(event["time"], 1773324000)

    def test_without_a_default_codebase_the_first_codebase_by_name_is_taken_in_any_order(self):
        stamps = [
            {"codebase": "tools", "revision": "2" * 40, "branch": "dev", "repository": "t.git"},
            {"codebase": "app", "revision": "1" * 40, "branch": "main", "repository": "a.git"},
        ]
        for order in (stamps, stamps[::-1]):
            event = events.build_started("m1", self.build, "linux", sourcestamps=order)
            self.assertEqual((event["codebase"], event["changeset"]), ("app", "1" * 40))

    def test_build_without_source_stamps(self):
        event = events.build_started("m1", self.build, "nightly")
        self.assertIsNone(event["changeset"])
        self.assertIsNone(event["repository"])
        self.assertEqual(event["slaves"], [])
        self.assertEqual(event["changes"], [])

    def test_properties_keep_their_source(self):
        props = {"got_revision": (HEAD, "Git"), "odd": ["listed", "Step"]}
        self.assertEqual(
            events.sourced_properties(props),
            {
                "got_revision": {"value": HEAD, "source": "Git"},
                "odd": {"value": "listed", "source": "Step"},
            },
        )

    def test_finished(self):
        event = events.build_finished("m1", self.build)
        self.assertEqual(
            event,
            {
                "type": "build_finished",
                "master_id": "m1",
                "event_id": "build-42-finished",
                "time": 1773324300,
                "build_id": 42,
                "result": 2,
            },
        )

    def test_property_ids_tell_values_apart_and_repeat_identically(self):
        a = events.property_event("m1", 42, "got_revision", HEAD, "Git")
        self.assertEqual(a, events.property_event("m1", 42, "got_revision", HEAD, "Git"))
        b = events.property_event("m1", 42, "got_revision", "other", "Git")
        again = events.property_event("m1", 42, "got_revision", HEAD, "Git", repeat=1)
        self.assertEqual(len({a["event_id"], b["event_id"], again["event_id"]}), 3)


class TestLogs(unittest.TestCase):
    def test_stdio_lines_go_to_their_channel(self):
        content = "hmake\nocc a.c\nea.c:1: warning\nocc b.c\nxodd line\n"
        self.assertEqual(
            events.split_stdio(content),
            {
                "header": "make\n",
                "stdout": "cc a.c\ncc b.c\nxodd line\n",
                "stderr": "a.c:1: warning\n",
            },
        )

    def test_only_a_newline_ends_a_stdio_line(self):
        content = "o10%\r50%\r100%\neplain\x0cerror here\u2028more\nolast, unfinished"
        self.assertEqual(
            events.split_stdio(content),
            {
                "stdout": "10%\r50%\r100%\nlast, unfinished",
                "stderr": "plain\x0cerror here\u2028more\n",
            },
        )

    def test_offsets_count_utf8_bytes(self):
        chunks, end = events.log_events("m1", 42, 1, 17, "stdout", "héllo\n", 10)
        self.assertEqual(end, 17)
        self.assertEqual(chunks[0]["offset"], 10)
        self.assertEqual(chunks[0]["event_id"], "log-17-stdout-@10-17")

    def test_big_text_is_cut_at_line_ends_into_consecutive_chunks(self):
        text = "".join(f"line {n}\n" for n in range(1000))
        chunks, end = events.log_events("m1", 42, 1, 17, "stdout", text, 0, limit=1000)
        self.assertEqual("".join(c["text"] for c in chunks), text)
        self.assertEqual(end, len(text.encode()))
        offset = 0
        for c in chunks:
            self.assertEqual(c["offset"], offset)
            self.assertTrue(c["text"].endswith("\n"))
            self.assertLessEqual(len(c["text"].encode()), 1000)
            offset += len(c["text"].encode())

    def test_a_long_line_is_cut_between_characters(self):
        text = "é" * 1000  # 2000 bytes, no line end
        pieces = events.chunk_text(text, limit=301)
        self.assertEqual("".join(pieces), text)
        self.assertTrue(all(len(p.encode()) <= 301 for p in pieces))

    def test_binary_output_is_cut_so_that_each_line_stays_under_the_daemons_limit(self):
        # Control characters escape to six bytes each: 256 KiB of them would be a 1.5 MiB line.
        text = "\x00\x01\x02" * 100_000 + "tail\n"
        chunks, end = events.log_events("m1", 42, 1, 17, "stdout", text, 0)
        self.assertEqual("".join(c["text"] for c in chunks), text)
        self.assertEqual(end, len(text.encode()))
        lines = [encode_event(c) for c in chunks]
        self.assertLessEqual(max(map(len, lines)), events.MAX_LOG_CHUNK + 1024)
        # Plain text is still cut at the byte limit, not at a sixth of it.
        plain = "x" * (3 * events.MAX_LOG_CHUNK)
        self.assertEqual(len(events.chunk_text(plain)), 3)

    def test_a_lone_surrogate_in_log_text_goes_as_a_replacement_character(self):
        chunks, end = events.log_events("m1", 42, 1, 17, "stdout", "a\udc80b\n", 0)
        self.assertEqual([c["text"] for c in chunks], ["a\ufffdb\n"])
        self.assertEqual(end, len("a\ufffdb\n".encode()))


class TestTooLarge(unittest.TestCase):
    """What would make a line the daemon refuses (1 MiB by default) goes as a marker instead: a
    refused build_started costs the whole build."""

    build = {"buildid": 42, "number": 7, "started_at": 1773324451}

    def test_a_change_with_many_files_and_a_huge_property_still_start_the_build(self):
        change = {"revision": HEAD, "files": [f"src/file{n}.c" for n in range(20_000)]}
        props = {"dump": ("x" * 2_000_000, "Step"), "small": ("ok", "Step")}
        event = events.build_started("m1", self.build, "linux", properties=props, changes=[change])
        self.assertLess(len(encode_event(event)), events.MAX_START_BYTES)
        files = event["changes"][0]["files"]
        self.assertEqual(len(files), events.MAX_CHANGE_FILES + 1)
        self.assertEqual(files[-1], "(and 19000 more files, left out by the plugin)")
        self.assertIn("left out by the Buildbot plugin", event["properties"]["dump"]["value"])
        self.assertEqual(event["properties"]["small"]["value"], "ok")

    def test_many_values_each_within_bounds_are_cut_down_together(self):
        props = {f"p{n}": ("y" * 60_000, "Step") for n in range(20)}
        event = events.build_started("m1", self.build, "linux", properties=props)
        self.assertLess(len(encode_event(event)), events.MAX_START_BYTES)
        self.assertTrue(all("left out" in p["value"] for p in event["properties"].values()))

    def test_whatever_the_build_carries_its_first_event_fits(self):
        many_changes = [
            {"revision": HEAD, "comments": "c" * 500, "files": [f"f{n}" for n in range(20_000)]}
        ] + [{"revision": HEAD, "comments": "c" * 500, "files": ["a.c"]} for _ in range(2_000)]
        many_props = {f"p{n}": ("v" * 900, "Step") for n in range(1_500)}
        countless = {f"property{n}": (n, "Step") for n in range(40_000)}
        for props, changes in (
            (many_props, []),
            ({}, many_changes),
            (many_props, many_changes),
            (countless, many_changes),
        ):
            event = events.build_started(
                "m1", self.build, "linux", properties=props, changes=changes
            )
            self.assertLess(len(encode_event(event)), events.MAX_START_BYTES)
            self.assertIn("left out", encode_event(event).decode())
        # A change's files are counted from what the build had, not from the list already cut.
        event = events.build_started(
            "m1", self.build, "linux", properties=countless, changes=many_changes[:1]
        )
        self.assertEqual(event["changes"][0]["files"], ["(20000 files, left out by the plugin)"])
        self.assertEqual(
            event["properties"][events.LEFT_OUT]["value"],
            "(40000 properties, left out to keep the build's first event within the daemon's "
            "line limit)",
        )

    def test_a_value_json_cannot_hold_goes_as_a_marker_not_an_exception(self):
        class Broken:
            def __str__(self):
                raise RuntimeError("no text")

        event = events.property_event("m1", 42, "bad", {(1, 2): "tuple key"}, "Step")
        self.assertIn("cannot be written as JSON", event["value"])
        event = events.property_event("m1", 42, "bad", [Broken()], "Step")
        self.assertIn("cannot be written as JSON", event["value"])

    def test_a_huge_property_set_later_goes_as_a_marker_with_a_stable_id(self):
        first = events.property_event("m1", 42, "dump", "z" * 2_000_000, "Step")
        again = events.property_event("m1", 42, "dump", "z" * 2_000_000, "Step")
        self.assertIn("left out", first["value"])
        self.assertEqual(first["event_id"], again["event_id"])


class TestCommit(unittest.TestCase):
    change = {
        "changeid": 5,
        "revision": HEAD,
        "repository": "https://git.example.org/x.git",
        "author": "Tomás Ferreira <tomas@example.org>",
        "committer": "Marta <marta@example.org>",
        "comments": "first line\n\nbody",
        "when_timestamp": 1773316360,
    }

    def test_commit_from_change(self):
        event = events.commit_event("m1", self.change)
        self.assertEqual(event["event_id"], "change-5-commit")
        self.assertEqual(event["subject"], "first line")
        self.assertEqual(
            (event["commiter_name"], event["commiter_email"]), ("Marta", "marta@example.org")
        )
        self.assertEqual(event["author_date"], 1773316360)

    def test_no_commit_without_full_hash_or_repository(self):
        for change in ({**self.change, "revision": "eb57b49"}, {**self.change, "repository": ""}):
            self.assertIsNone(events.commit_event("m1", change))
