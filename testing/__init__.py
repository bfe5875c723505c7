"""Writers of small synthetic data files in exactly the real formats, for tests, benchmarks and users' own CI.

The real data sets cannot ship with the package or be fetched in CI, yet every loader must be exercised
on the quirks of its real files: `uverify.testing.loan` writes Lending Club's 151-column accepted-loans
csv and modeldata's `lending_club` table, `uverify.testing.images` SVHN's .mat files, HAM10000 and
Mini-ImageNet, `uverify.testing.text` the Disaster Tweets csv; `uverify.testing.reports` strips a report of what
differs between two runs of one check (timings, versions, paths). The data are learnable on purpose, so a
study on them means something. No product module imports this package: it imports the loaders (for their
file and column names), never the other way round.
"""
