"""A CSV report: sales rows in, a summary per region and month out.

    taskhost run plugins/scripts/report.py --input sales.csv

Input: CSV text with a header row holding at least `date` (YYYY-MM-DD),
`region` and `amount` (a decimal number). Output: JSON with, per region,
the row count, the total, the mean and the median, and the total per
month. Amounts are summed as decimals, so totals are exact. A bad row is a
permanent error naming its line: running the task again cannot help.
"""

import csv
import io
import statistics
from collections import defaultdict
from datetime import date
from decimal import Decimal, InvalidOperation


def run(input):
    rows = csv.DictReader(io.StringIO(input.text()))
    missing = {"date", "region", "amount"} - set(rows.fieldnames or [])
    if missing:
        raise host.PermanentError(f"the CSV has no column {', '.join(sorted(missing))}")
    regions = defaultdict(list)
    months = defaultdict(Decimal)
    for line, row in enumerate(rows, start=2):
        try:
            day = date.fromisoformat(row["date"])
            amount = Decimal(row["amount"])
        except (ValueError, InvalidOperation) as error:
            raise host.PermanentError(f"line {line}: {error}") from None
        regions[row["region"]].append(amount)
        months[day.strftime("%Y-%m")] += amount
    print(f"{sum(len(v) for v in regions.values())} rows, {len(regions)} regions")
    return {
        "regions": {
            name: {
                "rows": len(amounts),
                "total": str(sum(amounts)),
                "mean": str(round(statistics.mean(amounts), 2)),
                "median": str(statistics.median(amounts)),
            }
            for name, amounts in sorted(regions.items())
        },
        "months": {month: str(total) for month, total in sorted(months.items())},
    }
