"""FileSource: OHLCV CSV/Parquet exports, Binance kline archives, and the shared real files."""

from __future__ import annotations

import gzip
import os
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from autotrader_assets.defs.market_data.connectors import FileSource, FileSourceError, get_source, parse_times
from autotrader_assets.defs.market_data.connectors import files as files_module
from autotrader_assets.defs.market_data.schema import BAR_COLUMNS, MalformedPayloadError, detect_interval_seconds
from autotrader_assets.defs.market_data.validation import validate_bars
from tests.support.connectors import shared_data_dir

T0 = pd.Timestamp("2024-01-02 00:00", tz="UTC")
T0_MS = int(T0.value // 1_000_000)


def minute(i: int) -> pd.Timestamp:
    return T0 + pd.Timedelta(minutes=i)


def kline_line(open_time: int, price: float, unit_ms: int = 1) -> str:
    """A line of a data.binance.vision kline CSV (no header, 12 columns)."""
    close_time = open_time + 60_000 * unit_ms - 1
    return f"{open_time},{price},{price + 1},{price - 1},{price + 0.5},12.5,{close_time},1250.0,42,6.0,600.0,0"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_with_timestamp_header_iso_strings(tmp_path):
    path = write(
        tmp_path / "BTC_1m.csv",
        "timestamp,open,high,low,close,volume\n"
        "2024-01-02 00:00:00.000000,10,11,9,10.5,100\n"
        "2024-01-02 00:01:00.000000,10.5,12,10,11,200\n",
    )
    out = FileSource(path).fetch_bars("BTC", T0, minute(10))
    assert list(out.columns) == BAR_COLUMNS
    assert str(out["ts"].dtype) == "datetime64[ns, UTC]"
    assert out["ts"].tolist() == [minute(0), minute(1)]
    assert out["high"].tolist() == [11.0, 12.0]
    assert set(out["instrument"]) == {"BTC"} and set(out["source"]) == {"file"}


@pytest.mark.parametrize("time_header", ["Date", "TIME", "open_time", "Timestamp", "datetime"])
def test_time_column_names_are_case_insensitive(tmp_path, time_header):
    path = write(
        tmp_path / "x.csv",
        f"{time_header},Open,HIGH,low,Close,Volume\n2024-01-02T00:05:00+00:00,1,2,0.5,1.5,3\n",
    )
    out = FileSource(path).fetch_bars("X", T0, minute(10))
    assert out["ts"].tolist() == [minute(5)] and out["close"].tolist() == [1.5]


def test_open_time_wins_over_close_time_and_time(tmp_path):
    path = write(
        tmp_path / "x.csv",
        f"close_time,time,open_time,open,high,low,close,volume\n{T0_MS + 59_999},{T0_MS + 120_000},{T0_MS},1,2,0.5,1.5,3\n",
    )
    assert FileSource(path).load("X")["ts"].tolist() == [T0]


def test_zoned_iso_strings_are_converted_to_utc(tmp_path):
    path = write(tmp_path / "x.csv", "date,open,high,low,close,volume\n2024-01-02 02:00:00+02:00,1,1,1,1,1\n")
    assert FileSource(path).load("X")["ts"].tolist() == [T0]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (T0_MS // 1000, T0),  # seconds
        (T0_MS, T0),  # milliseconds
        (T0_MS * 1000, T0),  # microseconds (newer Binance archives)
        (T0_MS * 1_000_000, T0),  # nanoseconds
        (float(T0_MS // 1000) + 0.5, T0 + pd.Timedelta(milliseconds=500)),
    ],
)
def test_epoch_units_are_detected_by_magnitude(value, expected):
    assert parse_times(pd.Series([value])).tolist() == [expected]


def test_binance_archive_zip_in_milliseconds(tmp_path):
    csv_text = "\n".join(kline_line(T0_MS + i * 60_000, 100.0 + i) for i in range(5)) + "\n"
    archive = tmp_path / "BTCUSDT-1m-2024-01.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("BTCUSDT-1m-2024-01.csv", csv_text)
    out = FileSource(directory=tmp_path, pattern="{instrument}-1m-*.zip").fetch_bars("BTCUSDT", T0, minute(3))
    assert out["ts"].tolist() == [minute(0), minute(1), minute(2)]
    assert out["open"].tolist() == [100.0, 101.0, 102.0]
    assert out["volume"].tolist() == [12.5] * 3


def test_archives_mixing_milliseconds_and_microseconds_load_together(tmp_path):
    # 2024-12 archive in ms, 2025-01 archive in us: Binance switched units in between.
    december = pd.Timestamp("2024-12-31 23:58", tz="UTC")
    january = pd.Timestamp("2025-01-01 00:00", tz="UTC")
    dec_ms = int(december.value // 1_000_000)
    jan_us = int(january.value // 1_000)
    with zipfile.ZipFile(tmp_path / "ETHUSDT-1m-2024-12.zip", "w") as zf:
        zf.writestr("ETHUSDT-1m-2024-12.csv", "\n".join(kline_line(dec_ms + i * 60_000, 1.0) for i in range(2)))
    with zipfile.ZipFile(tmp_path / "ETHUSDT-1m-2025-01.zip", "w") as zf:
        zf.writestr(
            "ETHUSDT-1m-2025-01.csv", "\n".join(kline_line(jan_us + i * 60_000_000, 2.0, 1000) for i in range(2))
        )
    write(tmp_path / "ETHUSDT-1m-2025-01.zip.CHECKSUM", "abc  ETHUSDT-1m-2025-01.zip\n")
    src = FileSource(directory=tmp_path, pattern="{instrument}-1m-*")
    out = src.fetch_bars("ETHUSDT", december, january + pd.Timedelta(minutes=2))
    assert out["ts"].tolist() == [
        december,
        december + pd.Timedelta(minutes=1),
        january,
        january + pd.Timedelta(minutes=1),
    ]
    assert out["open"].tolist() == [1.0, 1.0, 2.0, 2.0]
    assert [p.name for p in src.files_for("ETHUSDT")] == ["ETHUSDT-1m-2024-12.zip", "ETHUSDT-1m-2025-01.zip"]


def test_headerless_plain_csv_and_gzip(tmp_path):
    lines = "\n".join(kline_line(T0_MS + i * 60_000, 5.0) for i in range(3)) + "\n"
    plain = write(tmp_path / "a.csv", lines)
    packed = tmp_path / "b.csv.gz"
    with gzip.open(packed, "wt") as handle:
        handle.write(lines)
    assert FileSource(plain).load("A")["ts"].tolist() == [minute(0), minute(1), minute(2)]
    assert FileSource(packed).load("B")["close"].tolist() == [5.5] * 3


def test_binance_futures_archive_with_header(tmp_path):
    header = "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,ignore\n"
    path = write(tmp_path / "f.csv", header + kline_line(T0_MS, 7.0) + "\n")
    assert FileSource(path).load("F")["open"].tolist() == [7.0]


@pytest.mark.parametrize("time_kind", ["datetime", "epoch_ms", "naive"])
def test_parquet_files(tmp_path, time_kind):
    times = pd.Series([minute(1), minute(0)])
    column = {
        "datetime": times,
        "epoch_ms": times.map(lambda t: int(t.value // 1_000_000)),
        "naive": times.dt.tz_localize(None),
    }[time_kind]
    frame = pd.DataFrame({"TS": column, "open": [2.0, 1.0], "high": 3.0, "low": 0.5, "close": 1.0, "volume": 9})
    path = tmp_path / "x.parquet"
    frame.to_parquet(path)
    out = FileSource(path).load("X")
    assert out["ts"].tolist() == [minute(0), minute(1)]
    assert out["open"].tolist() == [1.0, 2.0]


def test_fetch_filters_half_open_window(tmp_path):
    rows = "\n".join(f"{T0_MS + i * 60_000},{i},{i},{i},{i},1" for i in range(10))
    path = write(tmp_path / "x.csv", "timestamp,open,high,low,close,volume\n" + rows)
    out = FileSource(path).fetch_bars("X", minute(2), minute(5))
    assert out["ts"].tolist() == [minute(2), minute(3), minute(4)]
    assert FileSource(path).fetch_bars("X", minute(20), minute(30)).empty


def test_unsorted_rows_are_sorted_identical_duplicates_dropped_and_counted(tmp_path):
    path = write(
        tmp_path / "x.csv",
        "timestamp,open,high,low,close,volume\n"
        f"{T0_MS + 120_000},3,3,3,3,1\n{T0_MS},1,1,1,1,1\n{T0_MS + 60_000},2,2,2,2,1\n{T0_MS},1,1,1,1,1\n"
        f"{T0_MS + 120_000},3,3,3,3,1\n",
    )
    out = FileSource(path).fetch_bars("X", T0, minute(10))
    assert out["ts"].tolist() == [minute(0), minute(1), minute(2)]
    assert out["open"].tolist() == [1.0, 2.0, 3.0]
    assert out.attrs["duplicates_dropped"] == 2
    # the count is the window's own, not the whole file's
    assert FileSource(path).fetch_bars("X", minute(1), minute(2)).attrs["duplicates_dropped"] == 0


def test_conflicting_duplicates_are_kept_for_the_schema_check_to_show(tmp_path):
    path = write(
        tmp_path / "x.csv",
        f"timestamp,open,high,low,close,volume\n{T0_MS},1,1,1,1,1\n{T0_MS + 60_000},2,2,2,2,1\n{T0_MS},9,9,9,9,1\n",
    )
    out = FileSource(path).fetch_bars("X", T0, minute(10))
    assert out["ts"].tolist() == [minute(0), minute(0), minute(1)]
    assert out["open"].tolist() == [1.0, 9.0, 2.0]  # both versions, in file order
    assert out.attrs["duplicates_dropped"] == 0
    report = validate_bars(out, date="2024-01-02")
    assert not report.passed
    cases = report.failure_cases
    unique = cases[cases["check"].astype(str) == "timestamps are not unique"]
    # both rows are shown, each with its own prices: the reader sees the conflict
    assert sorted(unique["index"].astype(int).unique()) == [0, 1]
    assert sorted(unique.loc[unique["column"] == "open", "failure_case"].astype(float)) == [1.0, 9.0]


def test_pattern_matching_overlapping_files_is_refused(tmp_path):
    write(
        tmp_path / "X_1.csv", f"timestamp,open,high,low,close,volume\n{T0_MS},1,1,1,1,1\n{T0_MS + 60_000},1,1,1,1,1\n"
    )
    write(tmp_path / "X_2.csv", f"timestamp,open,high,low,close,volume\n{T0_MS + 60_000},2,2,2,2,2\n")
    with pytest.raises(FileSourceError, match=r"several files for 'X' whose times overlap \(X_1.csv .* X_2.csv"):
        FileSource(directory=tmp_path).fetch_bars("X", T0, minute(5))


def test_pattern_matching_consecutive_parts_reads_them_as_one_series(tmp_path):
    write(
        tmp_path / "X-2024-01.csv",
        f"timestamp,open,high,low,close,volume\n{T0_MS},1,1,1,1,1\n{T0_MS + 60_000},1,1,1,1,1\n",
    )
    write(tmp_path / "X-2024-02.csv", f"timestamp,open,high,low,close,volume\n{T0_MS + 120_000},2,2,2,2,2\n")
    out = FileSource(directory=tmp_path, pattern="{instrument}-2024-*.csv").fetch_bars("X", T0, minute(5))
    assert out["open"].tolist() == [1.0, 1.0, 2.0]


def test_mapping_of_instruments_to_files(tmp_path):
    a = write(tmp_path / "a.csv", f"timestamp,open,high,low,close,volume\n{T0_MS},1,1,1,1,1\n")
    b = write(tmp_path / "b.csv", f"timestamp,open,high,low,close,volume\n{T0_MS},2,2,2,2,2\n")
    src = FileSource({"AAA": a, "BBB": [b]})
    assert src.load("BBB")["open"].tolist() == [2.0]
    assert src.load("AAA")["open"].tolist() == [1.0]
    with pytest.raises(FileSourceError, match="no file configured for instrument 'CCC'.*AUTOTRADER_FILE_SOURCE"):
        src.load("CCC")
    with pytest.raises(
        FileSourceError, match=r"no file configured for instrument\(s\) \['CCC'\].*CCC=/path/to/CCC.csv"
    ):
        FileSource({"AAA": a, "BBB": [b]}, instruments=["AAA", "CCC"])


def test_one_plain_file_never_serves_two_instruments(tmp_path):
    path = write(tmp_path / "gbpusd.csv", f"timestamp,open,high,low,close,volume\n{T0_MS},1,1,1,1,1\n")
    with pytest.raises(
        FileSourceError, match=r"one file .*gbpusd.csv.* 2 instruments \(GBPUSD, USDJPY\).*AUTOTRADER_FILE_DIR"
    ):
        FileSource(path, instruments=["GBPUSD", "USDJPY"])
    # one file for one configured instrument: still fine (the backward-compatible case)
    src = FileSource(path, instruments=["GBPUSD"])
    assert len(src.fetch_bars("GBPUSD", T0, minute(1))) == 1
    with pytest.raises(FileSourceError, match="holds 'GBPUSD'.*refusing to serve it as 'USDJPY'"):
        src.fetch_bars("USDJPY", T0, minute(1))
    # without a configured list the file belongs to the first instrument asked for
    free = FileSource(path)
    assert len(free.fetch_bars("USDJPY", T0, minute(1))) == 1
    with pytest.raises(FileSourceError, match="holds 'USDJPY'.*'GBPUSD'"):
        free.fetch_bars("GBPUSD", T0, minute(1))


def test_symbol_column_filters_one_file_per_instrument(tmp_path):
    path = write(
        tmp_path / "all.csv",
        "Ticker,timestamp,open,high,low,close,volume\n"
        f"GBPUSD,{T0_MS},1.5,1.5,1.5,1.5,0\nUSDJPY,{T0_MS},150,150,150,150,0\n"
        f"gbpusd,{T0_MS + 60_000},1.6,1.6,1.6,1.6,0\n",
    )
    src = FileSource(path, symbol_column="ticker", instruments=["GBPUSD", "USDJPY"])
    assert src.fetch_bars("GBPUSD", T0, minute(5))["close"].tolist() == [1.5, 1.6]
    usdjpy = src.fetch_bars("USDJPY", T0, minute(5))
    assert usdjpy["close"].tolist() == [150.0] and set(usdjpy["instrument"]) == {"USDJPY"}
    with pytest.raises(
        FileSourceError,
        match=r"'EURUSD' has no rows in column 'ticker'.*symbols found: \['GBPUSD', 'USDJPY', 'gbpusd'\]",
    ):
        src.fetch_bars("EURUSD", T0, minute(5))
    with pytest.raises(MalformedPayloadError, match="no symbol column 'sym'"):
        FileSource(path, symbol_column="sym").load("GBPUSD")


def test_default_pattern_does_not_confuse_prefixes(tmp_path):
    write(tmp_path / "BTC_1m.csv", f"timestamp,open,high,low,close,volume\n{T0_MS},1,1,1,1,1\n")
    write(tmp_path / "BTCUSDT_1m.csv", f"timestamp,open,high,low,close,volume\n{T0_MS},2,2,2,2,2\n")
    src = FileSource(directory=tmp_path)
    assert src.load("BTC")["open"].tolist() == [1.0]
    assert src.load("BTCUSDT")["open"].tolist() == [2.0]


def test_no_matching_file_is_a_clear_error(tmp_path):
    write(tmp_path / "ETH.zip.CHECKSUM", "x")
    with pytest.raises(FileNotFoundError, match=r"no bar file for 'ETH'.*ignored unsupported: \['ETH.zip.CHECKSUM'\]"):
        FileSource(directory=tmp_path).fetch_bars("ETH", T0, minute(1))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FileSource(tmp_path / "missing.csv").fetch_bars("X", T0, minute(1))
    with pytest.raises(FileNotFoundError, match="directory"):
        FileSource(directory=tmp_path / "nope")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("timestamp,open,high,close,volume\n2024-01-02,1,1,1,1\n", r"missing columns \['low'\]"),
        ("timestamp,open,high,low,close,vol_btc\n2024-01-02,1,1,1,1,1\n", r"\['vol_btc'\] looks like one; map it"),
        ("when,open,high,low,close,volume\n2024-01-02,1,1,1,1,1\n", "no time column"),
        (
            "date,open,high,low,close,volume\n2024-01-02,1,1,1,1,1\n2024-01-02 00:01,1,abc,1,1,1\n",
            r"row 1 \(line 3\): high 'abc' is not a number",
        ),
        (
            "date,open,high,low,close,volume\n2024-01-02,1,1,1,1,1\nnot-a-date,1,1,1,1,1\n",
            r"row 1 \(line 3\): time 'not-a-date' is not a timestamp",
        ),
        ("date,open,high,low,close,volume\n2024-01-02,1,1,,1,1\n", r"row 0 \(line 2\): low is empty"),
        ("date,open,high,low,close,volume\n2024-01-02,1,1,1,inf,1\n", r"row 0 \(line 2\): close inf is not a number"),
        ("date,Open,open,high,low,close,volume\n2024-01-02,1,1,1,1,1,1\n", "appear more than once"),
        ("1704153600000,1,2,3\n", "headerless file has 4 columns"),
        ("\n\n", "file is empty"),
    ],
)
def test_malformed_files_name_the_problem(tmp_path, text, message):
    path = write(tmp_path / "bad.csv", text)
    with pytest.raises(MalformedPayloadError, match=message) as info:
        FileSource(path).load("X")
    assert "bad.csv" in str(info.value)


def test_broken_or_empty_zip(tmp_path):
    broken = write(tmp_path / "broken.zip", "not a zip")
    with pytest.raises(MalformedPayloadError, match="not a readable zip"):
        FileSource(broken).load("X")
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("README.txt.md", "nothing")
    with pytest.raises(MalformedPayloadError, match="holds no CSV"):
        FileSource(empty).load("X")


def test_unsupported_extension_and_bad_constructor_arguments(tmp_path):
    odd = write(tmp_path / "x.json", "{}")
    with pytest.raises(ValueError, match="unsupported bar file"):
        FileSource(odd).load("X")
    with pytest.raises(ValueError, match="exactly one"):
        FileSource()
    with pytest.raises(ValueError, match="exactly one"):
        FileSource(odd, directory=tmp_path)
    with pytest.raises(ValueError, match="instrument"):
        FileSource(directory=tmp_path, pattern="*.csv")


def test_parsed_files_are_cached_until_they_change(tmp_path, monkeypatch):
    path = write(tmp_path / "x.csv", f"timestamp,open,high,low,close,volume\n{T0_MS},1,1,1,1,1\n")
    reads: list[Path] = []
    real_read = files_module.read_bar_file
    monkeypatch.setattr(files_module, "read_bar_file", lambda p, *a: reads.append(p) or real_read(p, *a))
    src = FileSource(path)
    src.fetch_bars("X", T0, minute(1))
    src.fetch_bars("X", T0, minute(1))
    assert len(reads) == 1
    write(path, f"timestamp,open,high,low,close,volume\n{T0_MS},5,5,5,5,5\n{T0_MS + 60_000},6,6,6,6,6\n")
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse-grained filesystems
    assert src.load("X")["open"].tolist() == [5.0, 6.0]
    assert len(reads) == 2


def test_get_source_file_accepts_path(tmp_path):
    path = write(tmp_path / "x.csv", f"timestamp,open,high,low,close,volume\n{T0_MS},1,1,1,1,1\n")
    src = get_source("file", path=str(path))
    assert isinstance(src, FileSource) and len(src.fetch_bars("X", T0, minute(1))) == 1


# ---- the real files in the shared data folder -------------------------------------------------


def test_real_binance_perp_file_contiguous_minutes():
    path = shared_data_dir() / "crypto_1m" / "BTCUSDT-PERP_1m_2021-12-31_2022-02-01.csv"
    src = FileSource(directory=path.parent, pattern="{instrument}_1m_*.csv")
    all_bars = src.load("BTCUSDT-PERP")
    assert len(all_bars) == 45_031
    assert all_bars["ts"].iloc[0] == pd.Timestamp("2021-12-31 23:01", tz="UTC")
    assert all_bars["ts"].iloc[-1] == pd.Timestamp("2022-02-01 05:31", tz="UTC")
    assert (all_bars["ts"].diff().dropna() == pd.Timedelta(minutes=1)).all()
    day = src.fetch_bars("BTCUSDT-PERP", pd.Timestamp("2022-01-05", tz="UTC"), pd.Timestamp("2022-01-06", tz="UTC"))
    assert len(day) == 1440
    assert day.loc[0, "open"] == 45871.0
    assert (day["high"] >= day[["open", "close"]].max(axis=1)).all()


def test_real_file_with_date_column_and_gaps():
    path = shared_data_dir() / "crypto_1m" / "BTC_1m_2017-11.csv"
    bars = FileSource(path).load("BTC")
    assert len(bars) == 13_681
    assert bars["ts"].iloc[0] == pd.Timestamp("2017-11-04 23:02", tz="UTC")
    gaps = bars["ts"].diff().dropna()
    assert (gaps >= pd.Timedelta(minutes=1)).all()
    assert (gaps > pd.Timedelta(minutes=1)).any()  # the file is known to have gaps; they stay gaps


def test_real_five_minute_files():
    folder = shared_data_dir() / "crypto_5m"
    src = FileSource(directory=folder, pattern="{instrument}-5m.csv")
    for name in ("ADA_BTC", "DASH_BTC", "ETC_BTC", "ETH_BTC", "LTC_BTC", "XMR_BTC"):
        bars = src.load(name)
        assert 5_600 <= len(bars) <= 5_800, name
        assert bars["ts"].diff().dropna().mode().iloc[0] == pd.Timedelta(minutes=5)
        assert bars["ts"].iloc[0] >= pd.Timestamp("2018-01-10", tz="UTC")
        assert bars["ts"].iloc[-1] < pd.Timestamp("2018-01-31", tz="UTC")


def test_get_source_resolves_lazy_registrations(tmp_path, monkeypatch):
    from autotrader_assets.defs.market_data import connectors

    monkeypatch.setitem(
        connectors.SOURCE_FACTORIES, "csv_folder", "autotrader_assets.defs.market_data.connectors.files:FileSource"
    )
    write(tmp_path / "Y.csv", f"timestamp,open,high,low,close,volume\n{T0_MS},1,1,1,1,1\n")
    src = get_source("csv_folder", directory=tmp_path)
    assert isinstance(src, FileSource) and isinstance(src, connectors.BarSource)
    assert src.load("Y")["ts"].tolist() == [T0]


# ---- formats: volume-less FX, column mapping, Feather; the recorded interval --------------------


def test_file_without_volume_loads_with_nan_volume(tmp_path):
    path = write(tmp_path / "fx.csv", f"timestamp,open,high,low,close\n{T0_MS},1.5,1.6,1.4,1.55\n")
    out = FileSource(path).fetch_bars("GBPUSD", T0, minute(1))
    assert out["volume"].isna().all() and out["close"].tolist() == [1.55]
    assert validate_bars(out, date="2024-01-02").passed
    # an explicit "no volume" in the mapping ignores a volume column the user does not trust
    with_volume = write(tmp_path / "v.csv", f"timestamp,open,high,low,close,volume\n{T0_MS},1,1,1,1,\n")
    assert FileSource(with_volume, columns={"volume": ""}).load("X")["volume"].isna().all()


def test_timestamp_utc_is_a_time_column_and_columns_can_be_mapped(tmp_path):
    cme = write(
        tmp_path / "ES.csv",
        "timestamp_utc,open,high,low,close,volume\n2024-01-02T00:00:00Z,4700,4701,4699,4700.5,12\n",
    )
    assert FileSource(cme).load("ES")["ts"].tolist() == [T0]
    odd = write(tmp_path / "odd.csv", f"When,O,H,L,Close,Qty,timestamp\n{T0_MS},1,2,0.5,1.5,7,0\n")
    mapping = {"ts": "When", "open": "o", "high": "H", "low": "l", "volume": "qty"}
    out = FileSource(odd, columns=mapping).load("X")
    assert out["ts"].tolist() == [T0]  # the mapped column wins over a recognised name
    assert out[["open", "high", "low", "close", "volume"]].iloc[0].tolist() == [1.0, 2.0, 0.5, 1.5, 7.0]
    with pytest.raises(MalformedPayloadError, match=r"mapping names \{'close': 'last'\}"):
        FileSource(odd, columns={**mapping, "close": "last"}).load("X")
    with pytest.raises(ValueError, match=r"may only map"):
        FileSource(odd, columns={"price": "close"})


def test_real_freqtrade_feather_file(tmp_path):
    csv = shared_data_dir() / "crypto_5m" / "ETH_BTC-5m.csv"
    frame = pd.read_csv(csv)
    frame["date"] = pd.to_datetime(frame["date"], utc=True)  # freqtrade stores a UTC datetime column
    feather = tmp_path / "ETH_BTC-5m.feather"
    frame.to_feather(feather)
    src = FileSource(directory=tmp_path, pattern="{instrument}-5m.feather")
    bars = src.load("ETH_BTC")
    from_csv = FileSource(csv).load("ETH_BTC")
    pd.testing.assert_frame_equal(bars, from_csv)
    day = src.fetch_bars("ETH_BTC", pd.Timestamp("2018-01-15", tz="UTC"), pd.Timestamp("2018-01-16", tz="UTC"))
    assert day.attrs["interval_seconds"] == 300 and 280 <= len(day) <= 288


def test_a_broken_feather_file_is_a_clear_error(tmp_path):
    bad = write(tmp_path / "x.feather", "not arrow")
    with pytest.raises(MalformedPayloadError, match="not a readable Feather file"):
        FileSource(bad).load("X")


def test_real_fx_file_without_volume_and_its_interval_across_weekends():
    path = shared_data_dir() / "fx_1m" / "GBPUSD_m1_ask_2012.csv"
    src = FileSource(directory=path.parent, instruments=["GBPUSD"])  # default pattern: GBPUSD_*
    monday = src.fetch_bars("GBPUSD", pd.Timestamp("2012-02-06", tz="UTC"), pd.Timestamp("2012-02-07", tz="UTC"))
    assert len(monday) > 1_000 and monday["volume"].isna().all()
    assert monday.attrs["interval_seconds"] == 60
    assert validate_bars(monday, date="2012-02-06").passed
    saturday = src.fetch_bars("GBPUSD", pd.Timestamp("2012-02-04", tz="UTC"), pd.Timestamp("2012-02-05", tz="UTC"))
    assert saturday.empty and saturday.attrs["interval_seconds"] == 60  # the series' interval, not the day's
    whole = src.load("GBPUSD")
    assert (whole["ts"].diff().max() > pd.Timedelta(days=1)) and detect_interval_seconds(whole) == 60


def test_real_intervals_of_the_one_and_five_minute_files():
    data = shared_data_dir()
    btc = FileSource(data / "crypto_1m" / "BTCUSDT-PERP_1m_2021-12-31_2022-02-01.csv")
    day = btc.fetch_bars("BTCUSDT", pd.Timestamp("2022-01-05", tz="UTC"), pd.Timestamp("2022-01-06", tz="UTC"))
    assert day.attrs == {"interval_seconds": 60, "duplicates_dropped": 0}
    gappy = FileSource(data / "crypto_1m" / "BTC_1m_2017-11.csv").load("BTC")
    assert gappy.attrs["interval_seconds"] == 60
    five = FileSource(directory=data / "crypto_5m", pattern="{instrument}-5m.csv")
    for name in ("ADA_BTC", "DASH_BTC", "ETC_BTC", "ETH_BTC", "LTC_BTC", "XMR_BTC"):
        assert (
            five.fetch_bars(name, pd.Timestamp("2018-01-20", tz="UTC"), pd.Timestamp("2018-01-21", tz="UTC")).attrs[
                "interval_seconds"
            ]
            == 300
        ), name


# ---- the resource, built from settings -----------------------------------------------------------


def _file_settings(monkeypatch, tmp_path, **env):
    from autotrader_assets.settings import load_settings

    for name in (
        "AUTOTRADER_FILE_SOURCE",
        "AUTOTRADER_FILE_DIR",
        "AUTOTRADER_FILE_PATTERN",
        "AUTOTRADER_FILE_SYMBOL_COLUMN",
        "AUTOTRADER_FILE_COLUMNS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AUTOTRADER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AUTOTRADER_MARKET_SOURCE", "file")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def test_resource_from_settings_serves_each_instrument_its_own_file(tmp_path, monkeypatch):
    from autotrader_assets.defs.market_data.resources import MarketSourceResource

    gbp = write(tmp_path / "gbp.csv", f"timestamp_utc,open,high,low,close\n{T0_MS},1.5,1.5,1.5,1.5\n")
    jpy = write(tmp_path / "jpy.csv", f"timestamp_utc,open,high,low,close\n{T0_MS},150,150,150,150\n")
    settings = _file_settings(
        monkeypatch,
        tmp_path,
        AUTOTRADER_INSTRUMENTS="GBPUSD,USDJPY",
        AUTOTRADER_FILE_SOURCE=f"GBPUSD={gbp},USDJPY={jpy}",
    )
    source = MarketSourceResource.from_settings(settings).get_source()
    assert source.fetch_bars("GBPUSD", T0, minute(1))["close"].tolist() == [1.5]
    assert source.fetch_bars("USDJPY", T0, minute(1))["close"].tolist() == [150.0]


def test_resource_from_settings_with_directory_pattern_and_columns(tmp_path, monkeypatch):
    from autotrader_assets.defs.market_data.resources import MarketSourceResource

    write(tmp_path / "ES_2024.csv", f"When,Open,High,Low,Last,Volume\n{T0_MS},1,2,0.5,1.5,3\n")
    settings = _file_settings(
        monkeypatch,
        tmp_path,
        AUTOTRADER_INSTRUMENTS="ES",
        AUTOTRADER_FILE_DIR=str(tmp_path),
        AUTOTRADER_FILE_PATTERN="{instrument}_*.csv",
        AUTOTRADER_FILE_COLUMNS="ts=When,close=Last",
    )
    bars = MarketSourceResource.from_settings(settings).get_source().fetch_bars("ES", T0, minute(1))
    assert bars[["open", "high", "low", "close", "volume"]].iloc[0].tolist() == [1.0, 2.0, 0.5, 1.5, 3.0]


def test_file_resource_without_files_says_what_to_set():
    from autotrader_assets.defs.market_data.resources import MarketSourceResource

    with pytest.raises(ValueError, match="no file is configured.*AUTOTRADER_FILE_SOURCE.*AUTOTRADER_FILE_DIR"):
        MarketSourceResource(name="file").get_source()
    with pytest.raises(ValueError, match="file_path and file_directory are set together"):
        MarketSourceResource(name="file", file_path="/a.csv", file_directory="/data").get_source()
    with pytest.raises(FileSourceError, match=r"one file .* 2 instruments \(A, B\)"):
        MarketSourceResource(name="file", file_path="/a.csv", instruments=["A", "B"]).get_source()
