"""Writes `phi_eval.jsonl`: the redaction evaluation set (PHI cases in every Safe Harbor category, and clinical
texts without PHI). Deterministic (seeded); run it again after editing the templates:

    python tests/gateway/data/make_phi_eval.py

Each PHI case is a realistic message with one or more labelled identifiers; values are drawn from pools in
several formats and names are drawn partly from outside the redactor's word lists (so cue and title rules are
measured, not only the lists). Clean texts are doses, vitals, labs, ICD-10 codes, eponymous diseases, dates that
belong to no one.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).with_name("phi_eval.jsonl")
R = random.Random(19)

GIVEN = ["Margaret", "Kofi", "Zara", "Tomasz", "Ifeoma", "Luis", "Priya", "Dmitri", "Aaliyah", "Haruto", "Siobhan",
         "Emeka", "Ngozi", "Bartholomew", "Wren", "Rosalind", "Thaddeus", "Marisol", "Anjali", "Yusuf", "Greta",
         "Desmond", "Ebony", "Juan", "Mei", "Oluwaseun", "Carmen", "Declan", "Fatima", "Harold", "Beatriz",
         "Nikolai", "Imani", "Colm", "Esperanza", "Takeshi", "Delphine", "Sven", "Linda", "Robert"]
SURN = ["Okafor", "Mensah", "Kowalczyk", "Fitzgerald", "Nakamura", "Delacroix", "Oyelaran", "Haverford", "Lindqvist",
        "Castellanos", "Abernathy", "Brennan", "Szymanski", "Achterberg", "Nwachukwu", "Papadopoulos", "Whitcombe",
        "Quintero", "Rasmussen", "Vukovic", "Garcia", "Smith", "Nguyen", "Patel", "Johnson", "Kim", "Martinez",
        "Olsen", "Thornbury", "Adeyemi"]
TITLE = ["Dr.", "Dr", "Mr.", "Mrs.", "Ms.", "Ms", "Nurse", "Professor", "Mr"]
RELATION = ["daughter", "son", "husband", "wife", "mother", "father", "sister", "brother", "neighbor", "caregiver",
            "granddaughter", "friend", "partner"]


def name() -> str:
    return f"{R.choice(GIVEN)} {R.choice(SURN)}"


def digits(n: int) -> str:
    return "".join(R.choice("0123456789") for _ in range(n))


def phone() -> str:
    a, b, c = f"{R.randint(201, 989)}", f"{R.randint(200, 989)}", digits(4)
    return R.choice([f"({a}) {b}-{c}", f"{a}-{b}-{c}", f"{a}.{b}.{c}", f"{a} {b} {c}", f"{a}{b}{c}",
                     f"+1 {a} {b} {c}", f"1-{a}-{b}-{c}", f"+1-{a}-{b}-{c}", f"({a}){b}-{c}"])


def ssn() -> str:
    a, b, c = f"{R.randint(100, 665)}", f"{R.randint(10, 99)}", f"{R.randint(1000, 9999)}"
    return R.choice([f"{a}-{b}-{c}", f"{a}.{b}.{c}", f"{a} {b} {c}", f"{a}{b}{c}", f"{a}/{b}/{c}"])


def mrn() -> str:
    return R.choice([digits(8), digits(7), "H" + digits(7), "MR-" + digits(6), "A" + digits(9), digits(10),
                     "HN" + digits(6), "E" + digits(7), f"{digits(3)}-{digits(3)}-{digits(2)}", "PT" + digits(6)])


def plan_id() -> str:
    letters = "".join(R.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(3))
    return R.choice([f"{letters}{digits(9)}", f"{letters}-{digits(3)}-{digits(3)}-{digits(2)}", f"W{digits(9)}",
                     f"{digits(1)}EG4-TE5-MK{digits(2)}", f"{letters}{digits(6)}", f"ZGP{digits(8)}",
                     f"{digits(11)}A"])


def email() -> str:
    g, s = R.choice(GIVEN).lower(), R.choice(SURN).lower()
    dom = R.choice(["gmail.com", "yahoo.com", "outlook.com", "mercyhealth.org", "uw.edu", "proton.me", "aol.com"])
    d1, d2 = dom.split(".")
    return R.choice([f"{g}.{s}@{dom}", f"{g[0]}{s}{digits(2)}@{dom}", f"{g}_{s}@{dom}",
                     f"{g} dot {s} at {d1} dot {d2}", f"{g}.{s} at {d1} dot {d2}", f"{g}{s} [at] {d1} [dot] {d2}",
                     f"{g} at {d1} dot {d2}", f"{g}.{s} (at) {d1} (dot) {d2}"])


def date() -> str:
    m, d, y = R.randint(1, 12), R.randint(1, 28), R.randint(1930, 2024)
    months = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
              "November", "December"]
    mon = months[m - 1]
    return R.choice([f"{m:02d}/{d:02d}/{y}", f"{m}/{d}/{y}", f"{m}-{d}-{y % 100:02d}", f"{y}-{m:02d}-{d:02d}",
                     f"{mon} {d}, {y}", f"{d} {mon} {y}", f"{mon[:3]} {d} {y}", f"{mon} {d}th",
                     f"{m}/{d}/{y % 100:02d}",
                     f"the {d}th of {mon}"])


STREETS = ["Maple", "Oak", "Elm", "Cedar", "Washington", "Lincoln", "Park", "Lakeview", "Sunset", "Hillcrest",
           "Jefferson", "Willow", "Chestnut", "Magnolia", "Franklin"]
SUFFIX = ["Street", "St", "Ave", "Avenue", "Road", "Rd", "Blvd", "Drive", "Dr", "Lane", "Ln", "Court", "Way",
          "Place", "Terrace"]
PLACES = [("Springfield", "IL", "62704"), ("Worcester", "MA", "01609"), ("Tucson", "AZ", "85719"),
          ("Dayton", "OH", "45402"), ("Fresno", "CA", "93721"), ("Duluth", "MN", "55802"),
          ("Macon", "GA", "31201"), ("Spokane", "WA", "99201"), ("Albany", "NY", "12207"),
          ("Lubbock", "TX", "79401"), ("Bangor", "ME", "04401"), ("Tulsa", "OK", "74103")]


def street() -> str:
    unit = R.choice(["", "", f", Apt {R.randint(1, 40)}{R.choice('ABC')}", f" #{R.randint(100, 999)}",
                     f", Suite {R.randint(100, 500)}"])
    return f"{R.randint(3, 9999)} {R.choice(['', 'N ', 'West '])}{R.choice(STREETS)} {R.choice(SUFFIX)}{unit}"


def ip() -> str:
    return R.choice([f"{R.randint(11, 223)}.{R.randint(0, 255)}.{R.randint(0, 255)}.{R.randint(1, 254)}",
                     f"192.168.{R.randint(0, 9)}.{R.randint(2, 250)}",
                     f"10.{R.randint(0, 255)}.{R.randint(0, 255)}.{R.randint(1, 254)}",
                     f"2001:db8:{R.randint(1, 9999):x}::{R.randint(1, 255):x}", "fe80::1ff:fe23:4567:890a"])


def url() -> str:
    return R.choice([f"https://mychart.{R.choice(['mercyhealth', 'stlukes', 'uchealth'])}.org/patient/{digits(6)}",
                     f"http://portal.example-clinic.com/results?id={digits(7)}",
                     f"www.{R.choice(SURN).lower()}familyphotos.com",
                     f"https://www.facebook.com/{R.choice(GIVEN).lower()}.{R.choice(SURN).lower()}",
                     f"https://drive.google.com/file/d/{digits(10)}",
                     f"carepages.org/{R.choice(GIVEN).lower()}{digits(2)}"])


def account() -> str:
    return R.choice([digits(10), f"{digits(4)}-{digits(4)}-{digits(4)}-{digits(4)}", f"AC-{digits(8)}",
                     digits(12), f"{digits(4)} {digits(4)} {digits(4)} {digits(4)}", f"INV{digits(7)}"])


def licence() -> str:
    letters = "".join(R.choice("ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(2))
    return R.choice([f"{letters[0]}{digits(7)}", f"{letters}{digits(7)}", f"D{digits(3)}-{digits(4)}-{digits(4)}",
                     digits(10), f"{letters}{digits(6)}", f"S{digits(8)}"])


def vin() -> str:
    chars = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
    return "1HG" + "".join(R.choice(chars) for _ in range(9)) + digits(5)


def plate() -> str:
    return R.choice([f"{digits(1)}ABC{digits(3)}", f"XYZ-{digits(4)}", f"{digits(3)} KLM",
                     f"7{R.choice('ABC')}QR{digits(3)}"])


def serial() -> str:
    return R.choice([f"PJN{digits(6)}", f"SN-{digits(8)}", f"{digits(2)}A{digits(5)}", f"G{digits(7)}H",
                     f"RLB{digits(6)}R", f"(01){digits(14)}", f"{digits(4)}-{digits(4)}-{digits(4)}"])


T: dict[str, list[str]] = {
    "NAME": [
        "Hi, my name is {v} and I was just diagnosed with type 2 diabetes. What should I eat?",
        "{v} here. My A1c came back at 8.2%, is that bad?",
        "I'm {v}, 67, on warfarin 5 mg. Can I take ibuprofen for my knee?",
        "My {rel} {v} has been confused since starting oxycodone. Should we go to the ER?",
        "{t} {v} told me to stop metoprolol before surgery. Is that normal?",
        "Patient: {v}. Chief complaint: chest pain radiating to the left arm for 2 hours.",
        "Can you summarise this note? Pt {v} presented with fever 39.1 C and productive cough.",
        "Please write a letter to {t} {v} about my lisinopril side effects.",
        "{t} {v} from cardiology said my ejection fraction is 35%. What does that mean?",
        "Referral from {t} {v}: 54-year-old with worsening dyspnea, BNP 890.",
        "Thanks, {v}",
        "My {rel}, {v}, takes sertraline 100 mg. Is it safe with St John's wort?",
        "Discharge summary for {v}: admitted for CHF exacerbation, diuresed with IV furosemide.",
        "{v} was my nurse yesterday and she said my potassium was 3.1.",
        "Dear {t} {v}, I have had a migraine for three days despite sumatriptan.",
        "Is it ok that {v} (my {rel}) skipped two doses of levetiracetam?",
        "Signed, {v}, RN",
        "The patient {v} reports nausea after starting semaglutide 0.5 mg weekly.",
        "Emergency contact: {v}, {rel}.",
        "I am writing on behalf of my {rel} {v}, who has stage 3 CKD.",
        "Consult requested by {t} {v} for uncontrolled hypertension, BP 182/104.",
        "Mrs. {v} is asking whether she can crush her metformin ER tablets.",
        "Could you tell {v} that the biopsy results are in?",
        "Hello, this is {v}. I missed my insulin glargine dose last night.",
        "{v}, 45 y/o male, HbA1c 9.1, LDL 162, started on atorvastatin 40 mg.",
    ],
    "ADDRESS": [
        "Please mail my records to {v}.",
        "I live at {v} and need a home health nurse for wound care.",
        "Send the CPAP supplies to {v}, the back door is unlocked.",
        "Our clinic moved to {v}; can I still get my flu shot there?",
        "Patient resides at {v} with her daughter, independent in ADLs.",
        "Ambulance was called to {v} for a fall with hip pain.",
        "My pharmacy is the one at {v}, can you send the prescription there?",
        "Home address: {v}. Needs transport to dialysis three times a week.",
        "He was found unresponsive at {v} and given naloxone.",
        "Is there a walk-in clinic near {v}? I think I sprained my ankle.",
        "Return address is {v} for the lab kit.",
        "Lives alone at {v}; neighbours check on him daily.",
        "Please send the bill to PO Box {n} instead of my house.",
    ],
    "LOCATION": [
        "I just moved to {city}, {st} {zip} and need a new endocrinologist.",
        "She lives in {city}, {st} and cannot drive to her chemo appointments.",
        "Are there any clinical trials for ALS near {city}, {st}?",
        "Patient transferred from a hospital in {city}, {stname} for ECMO.",
        "My zip code is {zip}; which urgent care is covered?",
        "He grew up in {city} and has a family history of early MI.",
        "We're at {city}, {st} {zip}. Is telehealth available for my therapy?",
        "I drive from {city} every week for infusions of infliximab.",
        "Lives in {county} County with her husband, former smoker.",
    ],
    "DOB": [
        "DOB {v}. I need to know if I'm due for a colonoscopy.",
        "Patient born {v}, presents with new-onset atrial fibrillation.",
        "Date of birth: {v}. Allergies: penicillin (hives).",
        "My son was born on {v} and hasn't had his MMR yet.",
        "D.O.B. {v} - please update my chart with my new insurance.",
        "I was born {v}, so am I old enough for the shingles vaccine?",
        "Birthdate {v}; weight 82 kg; on apixaban 5 mg BID.",
        "Her birthday is {v} and she is due for her 4-month vaccines.",
    ],
    "DATE": [
        "I was admitted on {v} for pneumonia and discharged three days later.",
        "Admission date: {v}. Diagnosis: DKA.",
        "He was discharged on {v} with a PICC line for IV antibiotics.",
        "My father died on {v} of a heart attack at 58, should I get screened?",
        "She passed away {v} after a long fight with pancreatic cancer.",
        "Date of surgery: {v} (laparoscopic cholecystectomy).",
        "I had surgery on {v} and the incision is now red and warm.",
        "Discharge date {v}; follow up with PCP in 1 week.",
        "Patient was seen on {v} for a sore throat; rapid strep negative.",
        "Date of death: {v}. Cause: sepsis secondary to UTI.",
        "He was admitted {v} with chest pain, troponin 0.45.",
    ],
    "PHONE": [
        "Call me at {v} if the lab results are abnormal.",
        "My cell is {v}, text me the appointment time.",
        "Fax the prior authorization to {v}.",
        "You can reach my daughter at {v} after 5 pm.",
        "Phone: {v}. Best time to call is mornings.",
        "The pharmacy number is {v} but nobody answers.",
        "Pt's callback number {v}; asks about refill of amlodipine 10 mg.",
        "Leave a message at {v}, I'm usually at dialysis until noon.",
        "Contact my caregiver on {v} about the home oxygen delivery.",
        "{v} is my husband's number in case of emergency.",
    ],
    "EMAIL": [
        "Please email my results to {v}.",
        "My email is {v} if you need to send the referral.",
        "Send the discharge instructions to {v} so my son can read them.",
        "Contact me at {v} about the sleep study.",
        "I can't log into the portal with {v}, can you reset it?",
        "Forward the MRI report to {v}.",
        "you can write to {v} for questions about her dementia care",
    ],
    "SSN": [
        "My SSN is {v}, do you need it for the Medicaid form?",
        "Social security number: {v}. Applying for disability for my COPD.",
        "SSN {v} - please verify my identity before the telehealth visit.",
        "Here is my social security {v} for the billing department.",
        "SS# {v}; DOB on file. Requesting records release.",
        "the last four of my SSN are {v4}",
        "Patient SSN: {v}. Allergic to sulfa drugs.",
        "My social is {v} and my insurance keeps getting denied for insulin.",
    ],
    "MRN": [
        "MRN {v}: 72-year-old with CHF, EF 30%.",
        "Medical record number {v}, please attach the echo report.",
        "Chart #{v}. Follow-up for hypothyroidism, TSH 7.8.",
        "My hospital number is {v}, can you check when my next MRI is?",
        "Patient ID: {v}. Admitted with GI bleed, Hgb 6.9.",
        "Med rec no. {v} - allergy list needs updating (latex).",
        "Please pull the chart for MRN: {v} before rounds.",
        "Encounter #{v}: sutures removed, wound healing well.",
        "Accession number {v} for the biopsy pathology.",
        "mrn {v} patient states pain 7/10",
        "Record number {v}; request for immunization history.",
    ],
    "HEALTH_PLAN": [
        "My insurance member ID is {v}, will it cover Ozempic?",
        "Medicare number {v}. Does Part B cover my nebulizer?",
        "Member ID: {v}, group 4471. Prior auth needed for MRI.",
        "Subscriber ID {v} for Blue Cross; please bill them directly.",
        "Policy number {v} - is physical therapy covered?",
        "Aetna ID {v}; PCP is in-network?",
        "Medicaid ID: {v}. Need transportation to the dialysis center.",
        "my health plan id is {v} and they denied the CGM",
        "Insurance #{v}, copay for specialists?",
    ],
    "ACCOUNT": [
        "Account number {v} shows a charge for a visit I never had.",
        "Please charge my card {v} for the copay.",
        "Billing account #{v}: I was billed twice for the colonoscopy.",
        "Acct {v} - can I set up a payment plan?",
        "Claim number {v} was denied, how do I appeal?",
        "My bank account {v} for the HSA reimbursement.",
        "Invoice #{v} for the ambulance ride seems too high.",
    ],
    "LICENSE": [
        "Driver's license {v}, needed for the controlled substance pickup.",
        "My license number is {v} and the pharmacy wants to verify it.",
        "DEA number {v} for the prescriber of the oxycodone.",
        "NPI {v2} - Dr. on the referral form.",
        "Passport number {v} for my travel vaccine certificate.",
        "State ID {v}; I lost my insurance card.",
        "Nursing license #{v} expired last month.",
    ],
    "VEHICLE": [
        "My car's VIN is {vin} and I need a disability placard.",
        "License plate {plate} - the patient drove himself to the ER after the seizure.",
        "He was in a crash; vehicle plate {plate}, airbags deployed.",
        "VIN: {vin}. Adaptive driving evaluation after the stroke.",
        "Parked in the garage, plate number {plate}, please validate parking.",
    ],
    "DEVICE": [
        "My pacemaker serial number is {v}, is it affected by the recall?",
        "Insulin pump S/N {v} keeps alarming 'occlusion'.",
        "CGM serial {v} - the sensor failed after 3 days.",
        "Device ID {v}: implantable defibrillator shocked me twice.",
        "Hearing aid serial no. {v} was lost at the hospital.",
        "UDI {v} for the knee implant, per the operative note.",
        "The CPAP machine (serial # {v}) shows AHI 12.",
    ],
    "URL": [
        "Here is my photo album of the rash: {v}",
        "I uploaded my glucose log at {v}, can you review it?",
        "My results are at {v} but I can't read them.",
        "See {v} for the video of my tremor.",
        "Fundraiser for my transplant: {v}",
    ],
    "IP": [
        "The telehealth app says my IP {v} is blocked, I can't join the visit.",
        "Login attempt from {v} on my patient portal, was that you?",
        "Device at {v} is the home BP cuff that uploads readings.",
        "My router is {v} and the remote monitoring keeps dropping.",
    ],
}


def fill(kind: str, template: str) -> tuple[str, list[dict[str, str]]]:
    """One case from one template: the text and its labelled identifiers."""
    ents: list[dict[str, str]] = []
    subs: dict[str, str] = {}

    def put(key: str, value: str, label: str) -> None:
        subs[key] = value
        ents.append({"type": label, "value": value})

    if "{t}" in template:
        subs["t"] = R.choice(TITLE)
    if "{rel}" in template:
        subs["rel"] = R.choice(RELATION)
    gen = {"NAME": name, "ADDRESS": street, "DOB": date, "DATE": date, "PHONE": phone, "EMAIL": email, "SSN": ssn,
           "MRN": mrn, "HEALTH_PLAN": plan_id, "ACCOUNT": account, "LICENSE": licence, "DEVICE": serial,
           "URL": url, "IP": ip}
    if kind == "NAME" and "{t}" in template and R.random() < 0.4:
        put("v", R.choice(SURN), kind)  # "Dr. Okafor": a surname alone after a title
    elif "{v}" in template:
        put("v", gen[kind](), kind)
    if "{v4}" in template:
        put("v4", digits(4), "SSN")
    if "{v2}" in template:
        put("v2", "1" + digits(9), "LICENSE")
    if "{n}" in template:
        put("n", str(R.randint(10, 99999)), "ADDRESS")
    if "{vin}" in template:
        put("vin", vin(), "VEHICLE")
    if "{plate}" in template:
        put("plate", plate(), "VEHICLE")
    if "{city}" in template:
        city, st, zp = R.choice(PLACES)
        put("city", city, "LOCATION")
        if "{st}" in template:
            subs["st"] = st
        if "{stname}" in template:
            subs["stname"] = {"IL": "Illinois", "MA": "Massachusetts", "AZ": "Arizona", "OH": "Ohio",
                              "CA": "California", "MN": "Minnesota", "GA": "Georgia", "WA": "Washington",
                              "NY": "New York", "TX": "Texas", "ME": "Maine", "OK": "Oklahoma"}[st]
        if "{zip}" in template:
            put("zip", zp, "LOCATION")
    elif "{zip}" in template:
        put("zip", R.choice(PLACES)[2], "LOCATION")
    if "{county}" in template:
        county = R.choice(["Cook", "Maricopa", "Hennepin", "Fulton", "Travis", "Suffolk"])
        put("county", f"{county} County", "LOCATION")
        template = template.replace("{county} County", "{county}")
    return template.format(**subs), ents


# Two identifiers of different kinds in one message, as real messages often have.
MIXED = [
    "I'm {name}, DOB {dob}, MRN {mrn}. My INR is 4.2 on warfarin, what should I do?",
    "{name} ({phone}) needs a refill of levothyroxine 75 mcg sent to {street}.",
    "Email {email} or call {phone} about the MRI of my lumbar spine.",
    "Member ID {plan}, SSN {ssn}: is my bariatric surgery covered?",
    "Dr. {surname} wants me admitted on {date} for the ablation.",
]

CLEAN = """Metformin 500 mg twice daily with meals; increase to 1000 mg BID after two weeks if tolerated.
BP 142/91, HR 88, RR 16, SpO2 97% on room air, temp 37.2 C.
HbA1c 7.8%, fasting glucose 152 mg/dL, LDL 131 mg/dL, eGFR 58 mL/min/1.73m2.
ICD-10 E11.9 type 2 diabetes mellitus without complications; I10 essential hypertension.
Hydrocodone/acetaminophen 10/325 mg every 6 hours as needed for pain, max 4 tablets per day.
Parkinson's disease with freezing of gait; carbidopa/levodopa 25/100 three times daily.
Non-Hodgkin lymphoma, stage IIIA, started R-CHOP cycle 1 of 6.
Addison's disease: hydrocortisone 15 mg in the morning and 5 mg in the afternoon.
Crohn's disease flare, CRP 48 mg/L, started prednisone 40 mg daily with taper.
Hashimoto thyroiditis, TSH 8.9 mIU/L, free T4 0.7 ng/dL; levothyroxine 50 mcg daily.
Graves' disease treated with methimazole 10 mg daily; TRAb positive.
Cushing's syndrome suspected; 24-hour urinary free cortisol 210 mcg.
Alzheimer's disease, MMSE 21/30, donepezil 5 mg at bedtime.
Huntington's disease family history; genetic counselling offered.
Guillain-Barre syndrome after Campylobacter infection; IVIG 0.4 g/kg/day for 5 days.
Bell's palsy on the left side, prednisolone 60 mg daily for 5 days.
Raynaud's phenomenon in both hands; nifedipine ER 30 mg daily.
Sjogren's syndrome with dry eyes; pilocarpine 5 mg three times a day.
Kawasaki disease: IVIG 2 g/kg and high-dose aspirin.
Tourette syndrome, tics worse with stress; consider guanfacine 1 mg.
Down syndrome, congenital heart disease repaired in infancy.
Stevens-Johnson syndrome after lamotrigine; stop the drug immediately.
Hodgkin lymphoma in remission after ABVD, PET negative.
Wilson's disease: ceruloplasmin 12 mg/dL, 24-hour urine copper elevated.
Paget's disease of bone, alkaline phosphatase 410 U/L.
Meniere's disease with vertigo attacks; low-salt diet and betahistine.
Barrett's esophagus, no dysplasia; repeat EGD in 3 years.
Kaposi sarcoma lesions on the lower legs, CD4 180.
Burkitt lymphoma, high-grade; admitted for tumor lysis prophylaxis.
Foley catheter placed, urine output 45 mL/hr.
Holter monitor showed 3 runs of nonsustained VT.
Glasgow Coma Scale 14 on arrival, pupils equal and reactive.
Apgar scores 8 and 9 at 1 and 5 minutes.
Murphy sign positive, ultrasound shows gallstones with wall thickening.
Positive Babinski sign on the right.
Epley maneuver performed for BPPV with good relief.
Heimlich maneuver was performed at the restaurant; now coughing.
Valsalva maneuver terminated the SVT; HR now 92.
Whipple procedure planned for pancreatic head adenocarcinoma.
Nissen fundoplication for refractory GERD.
Swan-Ganz catheter wedge pressure 22 mmHg.
Pap smear ASC-US, HPV positive; colposcopy recommended.
Gram stain shows gram-positive cocci in clusters.
Kegel exercises three times a day for stress incontinence.
Lyme disease: erythema migrans; doxycycline 100 mg BID for 14 days.
Wernicke encephalopathy risk: give thiamine 500 mg IV before glucose.
Tetralogy of Fallot repaired at age 2, now with pulmonary regurgitation.
Von Willebrand disease type 1; desmopressin before dental extraction.
Ehlers-Danlos syndrome, hypermobile type, recurrent shoulder dislocations.
Marfan syndrome, aortic root 4.6 cm; losartan 50 mg.
Amoxicillin 875 mg every 12 hours for 10 days.
Apixaban 5 mg BID; hold 48 hours before the procedure.
Insulin glargine 22 units at bedtime, lispro 6 units with meals plus correction scale.
Lisinopril 20 mg daily; potassium 5.1 mmol/L, creatinine 1.3 mg/dL.
Atorvastatin 40 mg nightly; ALT 32 U/L, AST 28 U/L.
Sertraline 50 mg daily, increase to 100 mg in 4 weeks; PHQ-9 score 16.
Furosemide 40 mg IV twice daily, net negative 1.5 L yesterday.
Prednisone taper: 40 mg for 5 days, then 30 mg for 5 days, then 20 mg.
Vancomycin trough 15.2 mcg/mL; continue 1250 mg every 12 hours.
Heparin drip at 18 units/kg/hr, aPTT 72 seconds.
INR 2.4 on warfarin 5 mg daily; target 2.0-3.0.
Hemoglobin 9.8 g/dL, MCV 72 fL, ferritin 8 ng/mL: iron deficiency anemia.
WBC 14.2 x10^9/L with 85% neutrophils, lactate 2.8 mmol/L.
Troponin I 0.04 ng/mL at 0 hours and 0.05 ng/mL at 3 hours.
Sodium 128 mmol/L, serum osmolality 265 mOsm/kg.
TSH 0.02 mIU/L, free T4 3.1 ng/dL consistent with hyperthyroidism.
Urinalysis: leukocyte esterase positive, nitrites positive, 50 WBC/hpf.
Chest X-ray: right lower lobe consolidation, no effusion.
CT head without contrast: no acute intracranial hemorrhage.
MRI lumbar spine: L4-L5 disc herniation with right L5 nerve root compression.
Echo: LVEF 35%, moderate mitral regurgitation, RVSP 45 mmHg.
ECG: sinus rhythm 72 bpm, QTc 468 ms, no ST changes.
Spirometry FEV1/FVC 0.62, FEV1 58% predicted, post-bronchodilator improvement 14%.
BMI 34.2 kg/m2, waist 112 cm.
Pain 7/10, worse with movement, better with rest.
CHA2DS2-VASc score 4, HAS-BLED 2.
Wells score 4.5, D-dimer 1.8 mg/L FEU.
PHQ-9 of 12 and GAD-7 of 9 at today's visit.
CPT 99214 for the established patient visit, 25 minutes.
ICD-10 J44.1 COPD with acute exacerbation; N18.3 CKD stage 3.
ICD-10 F32.1 major depressive disorder, single episode, moderate.
ICD-10 I48.91 unspecified atrial fibrillation; Z79.01 long-term anticoagulant use.
ICD-10 K21.9 GERD; R10.13 epigastric pain.
ICD-10 M54.5 low back pain; G43.909 migraine.
Take 2 puffs of albuterol 90 mcg every 4 to 6 hours as needed.
Tiotropium 18 mcg inhaled once daily.
Ondansetron 4 mg ODT every 8 hours as needed for nausea.
Gabapentin 300 mg at night, titrate to 300 mg three times daily.
Levetiracetam 500 mg BID, no seizures in 6 months.
Methotrexate 15 mg weekly with folic acid 1 mg daily.
Adalimumab 40 mg subcutaneously every other week.
Semaglutide 0.25 mg weekly for 4 weeks, then 0.5 mg weekly.
Empagliflozin 10 mg daily; watch for genital mycotic infections.
Amlodipine 10 mg daily caused ankle edema; switch to chlorthalidone 12.5 mg.
Clopidogrel 75 mg daily for 12 months after the drug-eluting stent.
Enoxaparin 1 mg/kg every 12 hours, weight 80 kg.
Potassium chloride 20 mEq orally twice daily.
Magnesium 1.5 mg/dL; replete with 2 g IV magnesium sulfate.
Normal saline 1 L bolus, then 125 mL/hr.
Oxygen 2 L/min by nasal cannula to keep saturation 92-96%.
Follow up in 2 weeks with repeat BMP.
Schedule a colonoscopy at age 45 per current guidelines.
Shingles vaccine: two doses 2 to 6 months apart for adults 50 and older.
Influenza vaccine every fall; pneumococcal PCV20 once at 65.
Tdap booster every 10 years, or at 5 years for a dirty wound.
Hepatitis B surface antibody 8 mIU/mL: not immune, revaccinate.
The visit on Monday went well; continue the current plan.
Return in 3 months, sooner if symptoms worsen.
Blood pressure goal under 130/80 for most adults with diabetes.
Limit sodium to 2,000 mg per day and fluids to 1.5 L per day.
Walk 30 minutes five days a week; aim for 150 minutes weekly.
Avoid grapefruit juice with simvastatin.
NSAIDs like ibuprofen 400 mg can raise blood pressure and harm the kidneys.
Acetaminophen up to 3 g per day is usually safe for adults without liver disease.
Do not drive for 24 hours after sedation.
Keep the incision dry for 48 hours, then shower normally.
If chest pain lasts more than 5 minutes, call 911.
Poison control can advise on accidental ingestions; keep medicines locked away.
Type 1 diabetes requires insulin; type 2 often starts with metformin.
Stage 2 hypertension is 140/90 or higher.
Grade 3 ankle sprain: consider orthopedic referral.
Class III heart failure symptoms with mild exertion.
Vitamin D 25-OH 14 ng/mL; start cholecalciferol 2,000 IU daily.
Vitamin B12 180 pg/mL; start 1,000 mcg daily.
Uric acid 9.2 mg/dL; allopurinol 100 mg daily after the flare settles.
PSA 6.8 ng/mL, up from 4.1 last year; urology referral.
Mammogram BI-RADS 2, benign; repeat in 1 year.
Pap every 3 years from 21 to 29, co-testing every 5 years from 30 to 65.
Lipase 420 U/L with epigastric pain radiating to the back.
Ammonia 88 umol/L; lactulose 30 mL three times daily.
Bilirubin 3.2 mg/dL, albumin 2.8 g/dL, INR 1.7: MELD 18.
Ferritin 1,200 ng/mL with transferrin saturation 62%.
CD4 count 420 cells/uL, viral load undetectable on bictegravir/FTC/TAF.
HIV PrEP with TDF/FTC daily; creatinine 0.9 mg/dL.
Hep C genotype 1a, viral load 2.1 million IU/mL; sofosbuvir/velpatasvir 12 weeks.
Tuberculin skin test 12 mm induration; chest X-ray normal.
COVID-19 PCR positive; nirmatrelvir/ritonavir for 5 days.
RSV vaccine for adults 60 and older after shared decision-making.
Peak flow 310 L/min, 65% of personal best.
Glucose 48 mg/dL: give 15 g fast-acting carbohydrate and recheck in 15 minutes.
Ketones 3.1 mmol/L, bicarbonate 12, anion gap 24: DKA protocol.
Creatinine clearance 28 mL/min: reduce gabapentin dose.
Dose of amoxicillin for a 20 kg child: 45 mg/kg/day divided twice daily.
Weight-based heparin 80 units/kg bolus.
The 2019 guideline recommends a statin for LDL above 190 mg/dL.
Ozempic and Wegovy are both semaglutide at different doses.
Tylenol and Advil can be alternated for fever in children over 6 months.
St John's wort interacts with many antidepressants.
Mayo Clinic and Cleveland Clinic publish patient guides on this.
Johns Hopkins Hospital guidelines for sepsis bundles.
Kaplan-Meier curve showed median survival of 14 months.
Cox regression hazard ratio 0.72 (95% CI 0.61-0.85).
Hardy-Weinberg equilibrium was met in the cohort.
The Framingham risk score was 18%.
Child-Pugh class B, score 8.
Ranson criteria 3 at admission.
APACHE II score 21 on ICU day 1.
CURB-65 score of 2: consider hospital admission.
Karnofsky performance status 70.
The patient is a 58-year-old man with a 40 pack-year smoking history.
Twin pregnancy at 32 weeks, betamethasone given.
G2P1 at 39 weeks, cervix 4 cm, 80% effaced.
Neonate 3.2 kg, bilirubin 14 mg/dL at 72 hours; phototherapy.
Pediatric dose of ibuprofen is 10 mg/kg every 6 to 8 hours.
BUN 42 mg/dL and creatinine 2.1 mg/dL, up from 1.2 last month.
A 10-point drop in systolic pressure on standing suggests orthostasis.
Serum calcium 11.2 mg/dL with PTH 98 pg/mL.
Cortisol 3 mcg/dL at 8 am; ACTH stimulation test next.
Prolactin 85 ng/mL; MRI pituitary ordered.
Testosterone 210 ng/dL on two morning samples.
Estradiol patch 0.05 mg twice weekly for hot flashes.
Tamsulosin 0.4 mg at bedtime for BPH, IPSS 18.
Finasteride 5 mg daily; recheck PSA in 6 months.
Bisphosphonate holiday after 5 years of alendronate 70 mg weekly.
DEXA T-score -2.7 at the femoral neck.
Tinnitus in both ears, audiogram shows high-frequency loss.
Visual acuity 20/40 OD, 20/25 OS; IOP 24 and 22 mmHg.
A1c goal under 7% for most nonpregnant adults.
Room 12 needs a bedside commode and fall precautions.
Bed 4 is on contact precautions for C. difficile.
Hello, I have diabetes and take Lipitor 20 mg.
Hi Doctor, is Metformin safe with a CKD stage 3 kidney?
This is Lisinopril 10 mg, the white oval tablet.
Tommy John surgery recovery takes 12 months.
Turner syndrome and Klinefelter syndrome are chromosomal conditions.
Ask your pharmacist about Paxlovid interactions.
Tell your doctor if you take Warfarin.
Call 911 if chest pain lasts more than 5 minutes.
Patient: 45 y/o male with CHF, NYHA class II.
Mark the dates of your migraines on a calendar.
Frank blood in the stool needs same-day evaluation.
Per Johns Hopkins guidelines, start heparin prophylaxis.
Lewy body dementia and Pick disease can look alike early on.
Whipple triad confirmed: glucose 42 mg/dL with symptoms relieved by glucose.
Dear Team, please review the vancomycin levels.
Take Vitamin D 2000 IU with Calcium 600 mg.
""".strip().splitlines()


def main() -> None:
    cases: list[dict[str, object]] = []
    per_kind = 24
    for kind, templates in T.items():
        for i in range(per_kind):
            text, ents = fill(kind, templates[i % len(templates)])
            cases.append({"text": text, "entities": ents, "category": kind})
    for i in range(20):
        template = MIXED[i % len(MIXED)]
        vals = {"name": name(), "dob": date(), "mrn": mrn(), "phone": phone(), "street": street(), "email": email(),
                "plan": plan_id(), "ssn": ssn(), "surname": R.choice(SURN), "date": date()}
        labels = {"name": "NAME", "dob": "DOB", "mrn": "MRN", "phone": "PHONE", "street": "ADDRESS",
                  "email": "EMAIL", "plan": "HEALTH_PLAN", "ssn": "SSN", "surname": "NAME", "date": "DATE"}
        used = [k for k in vals if "{" + k + "}" in template]
        cases.append({"text": template.format(**vals), "entities": [{"type": labels[k], "value": vals[k]}
                                                                    for k in used], "category": "MIXED"})
    for text in CLEAN:
        cases.append({"text": text, "entities": [], "category": "CLEAN"})
    with OUT.open("w") as fh:
        for case in cases:
            fh.write(json.dumps(case) + "\n")
    print(f"{len(cases)} cases ({sum(1 for c in cases if c['entities'])} with PHI, "
          f"{sum(1 for c in cases if not c['entities'])} clean) -> {OUT}")


if __name__ == "__main__":
    main()
